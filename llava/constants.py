"""Token ids and special strings shared by the data pipeline, the model and evaluation (values as in upstream LLaVA)."""

LOGDIR = "."

# Label value the loss ignores (torch.nn.CrossEntropyLoss default ignore_index).
IGNORE_INDEX = -100
# Placeholder id put in input_ids where an image's visual tokens are spliced in; never a real vocabulary id.
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
