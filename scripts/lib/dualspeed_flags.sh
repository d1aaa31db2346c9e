# DualSpeed flags shared by the *_dualspeed.sh scripts; each value can be overridden from the environment.
DUALSPEED_FLAGS=(
    --dualspeed True
    --pruning_ratio "${PRUNING_RATIO:-0.9}"
    --vtp_method "${VTP_METHOD:-divprune}"
    --mode_isolator_len "${ISOLATOR_LEN:-4}"
)
# Fine-tuning adds the slow mode (self-distillation) settings.
DUALSPEED_SFT_FLAGS=(
    "${DUALSPEED_FLAGS[@]}"
    --slow_mode_ratio "${SLOW_MODE_RATIO:-0.1}"
    --distill_temperature "${DISTILL_T:-1.0}"
    --distill_alpha "${DISTILL_ALPHA:-1.0}"
)
