"""Train-and-evaluate runs on the tiny world, shared by the Table-2 reproduction and the Fig.-5 sweep.

A run trains one *variant* with the project's own launch scripts (`scripts/v1_5/*.sh`, 2 CPU processes, the same
recipe and seed for every variant), then answers the world's evaluation questions in one or more *inference
modes*: generated short answers (`llava.eval.model_vqa_loader`, scored by `llava.eval.eval_tiny_world`) and the
likelihood of each answer choice with the true and with shuffled images (`llava.eval.model_vqa_choices`):

- `normal`: plain LLaVA inference (full visual tokens, no isolator) — what the paper's headline numbers use;
- `pruned`: each image's tokens pruned at the variant's ratio (DivPrune), no isolator;
- `pruned+isolator`: pruned, with the trained mode isolator prefixed (the input fast mode trains on).

Each finished variant leaves `<out>/<name>/result.json`; a later call with the same settings reuses it, so an
interrupted reproduction resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
MODES = ("normal", "pruned", "pruned+isolator")
EVAL_BATCH = 32


@dataclass(frozen=True)
class Variant:
    """One training configuration. `dualspeed=False` is the plain LLaVA recipe (Baseline)."""

    name: str
    dualspeed: bool
    pruning_ratio: float = 0.9
    slow_ratio: float = 0.1
    isolator_len: int = 4
    vtp_method: str = "divprune"
    pretrain_args: tuple[str, ...] = ()  # extra training flags of stage 1 (e.g. a token compressor)
    sft_args: tuple[str, ...] = ()  # extra training flags of stage 2 (e.g. layer skipping)
    fitprune_budget: Optional[float] = None  # fit a FitPrune recipe after stage 1 and train stage 2 with it

    @property
    def has_isolator(self) -> bool:
        return self.dualspeed and self.isolator_len > 0


BASELINE = Variant("Baseline", dualspeed=False)
NAIVE_PRUNE = Variant("NaivePrune", dualspeed=True, pruning_ratio=0.9, slow_ratio=0.0, isolator_len=0)
DUALSPEED = Variant("DualSpeed", dualspeed=True, pruning_ratio=0.9, slow_ratio=0.1, isolator_len=4)
# Optional extra row (issue 8): DualSpeed whose fast SFT steps also skip half of the LLM's decoder layers.
DUALSPEED_LAYER_SKIP = Variant("DualSpeed+LayerSkip", dualspeed=True, sft_args=(
    "--layer_skip_ratio", "0.5", "--layer_skip_schedule", "random"))
# Stage 1 with the average-pooling compressor (64 -> 4 pooled tokens at p = 0.9), stage 2 as DualSpeed.
DUALSPEED_AVGPOOL = Variant("DualSpeed+AvgPoolPretrain", dualspeed=True, pretrain_args=("--vtp_method", "avgpool"))
# Stage 2's fast steps prune inside the LLM by a FitPrune recipe (LLM FLOPs budget 0.8; the tiny world's long
# system prompt makes lower budgets unreachable) fitted on the stage-1 model; stage 1 and pruned inference: DivPrune.
DUALSPEED_FITPRUNE = Variant("DualSpeed+FitPrune", dualspeed=True, fitprune_budget=0.8)


@dataclass(frozen=True)
class Recipe:
    """Tiny-world schedule of the two stages (the quickstart's): global batches, epochs, learning rates, LoRA rank,
    SFT conversation template and DeepSpeed config, and the shared seed."""

    seed: int = 42
    num_procs: int = 2
    pretrain_batch: int = 32
    pretrain_per_device: int = 16
    pretrain_epochs: float = 3
    pretrain_lr: float = 2e-3
    sft_batch: int = 16
    sft_per_device: int = 8
    sft_epochs: float = 2
    sft_lr: float = 2e-3
    lora_r: int = 16
    lora_alpha: int = 32
    sft_version: str = "tiny_world"
    # ZeRO-2: on two gloo processes ZeRO-3's gathers cost more than the tiny model's compute.
    sft_zero_config: str = "./scripts/zero2.json"
    max_pretrain_samples: Optional[int] = None
    max_sft_samples: Optional[int] = None


def log(message: str) -> None:
    print(f"[experiments] {message}", file=sys.stderr, flush=True)


def subset(data: Path, limit: Optional[int], dest: Path) -> Path:
    """`data` itself, or its first `limit` records written to `dest` (for shorter sweeps)."""
    if limit is None:
        return data
    records = json.loads(data.read_text())
    if limit > len(records):
        raise ValueError(f"{data} has {len(records)} records, fewer than the {limit} asked for")
    dest.write_text(json.dumps(records[:limit]))
    return dest


def run_logged(cmd: list[str], env: dict, log_file: Path) -> float:
    """Run `cmd` in this environment updated by `env` (offline; the repository importable even when not installed)
    with its output in `log_file`; returns wall seconds. A failure raises naming the log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **env}
    start = time.perf_counter()
    with open(log_file, "w") as handle:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); last lines of {log_file}:\n{tail}")
    return seconds


def train_runtime(log_file: Path) -> Optional[float]:
    """Trainer's own `train_runtime` (seconds of the training loop, without start-up) from a stage log."""
    found = re.findall(r"'train_runtime': '?([0-9.]+)", log_file.read_text(errors="replace"))
    return float(found[-1]) if found else None


def train(variant: Variant, world: Path, run: Path, recipe: Recipe) -> dict:
    """Stage 1 (projector pretraining) and stage 2 (LoRA SFT) of `variant`; returns the stage timings."""
    env = dict(
        MODEL=str(world / "models" / "tiny-llama"), VISION_TOWER=str(world / "models" / "tiny-clip"),
        IMAGE_FOLDER=str(world / "images"), NUM_GPUS=str(recipe.num_procs), BF16="False", TF32="False",
        GRADIENT_CHECKPOINTING="False", NUM_WORKERS="0", REPORT_TO="none",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        PRUNING_RATIO=str(variant.pruning_ratio), SLOW_MODE_RATIO=str(variant.slow_ratio),
        ISOLATOR_LEN=str(variant.isolator_len), VTP_METHOD=variant.vtp_method,
    )
    suffix = "_dualspeed" if variant.dualspeed else ""
    common = ["--seed", str(recipe.seed), "--data_seed", str(recipe.seed), "--logging_steps", "10"]
    timings = {}
    pre_data = subset(world / "pretrain.json", recipe.max_pretrain_samples, run / "pretrain_subset.json")
    sft_data = subset(world / "sft.json", recipe.max_sft_samples, run / "sft_subset.json")
    stages = [
        ("pretrain", f"scripts/v1_5/pretrain{suffix}.sh", dict(
            DATA_PATH=str(pre_data), OUTPUT_DIR=str(run / "pretrain"),
            GLOBAL_BATCH=str(recipe.pretrain_batch), PER_DEVICE_BATCH=str(recipe.pretrain_per_device)),
         ["--num_train_epochs", str(recipe.pretrain_epochs), "--learning_rate", str(recipe.pretrain_lr),
          *variant.pretrain_args]),
        ("sft", f"scripts/v1_5/finetune_lora{suffix}.sh", dict(
            DATA_PATH=str(sft_data), PRETRAIN_DIR=str(run / "pretrain"), OUTPUT_DIR=str(run / "llava-lora"),
            GLOBAL_BATCH=str(recipe.sft_batch), PER_DEVICE_BATCH=str(recipe.sft_per_device),
            ZERO_CONFIG=recipe.sft_zero_config),
         ["--num_train_epochs", str(recipe.sft_epochs), "--version", recipe.sft_version,
          "--lora_r", str(recipe.lora_r), "--lora_alpha", str(recipe.lora_alpha),
          "--learning_rate", str(recipe.sft_lr), "--mm_projector_lr", str(recipe.sft_lr), *variant.sft_args]),
    ]
    for stage, script, stage_env, extra in stages:
        if stage == "sft" and variant.fitprune_budget is not None:
            timings["fit_recipe"], recipe_file = fit_fitprune_recipe(variant, world, run, sft_data, env)
            extra = extra + ["--vtp_method", "fitprune", "--fitprune_recipe", str(recipe_file)]
        log(f"{variant.name}: {stage} ({script})")
        log_file = run / f"{stage}.log"
        wall = run_logged(["bash", script, *common, *extra], {**env, **stage_env}, log_file)
        timings[stage] = {"wall_s": round(wall, 1), "train_runtime_s": train_runtime(log_file)}
        log(f"{variant.name}: {stage} done in {wall:.0f}s (training loop {timings[stage]['train_runtime_s']}s)")
    return timings


def fit_fitprune_recipe(variant: Variant, world: Path, run: Path, data: Path, env: dict) -> tuple[dict, Path]:
    """Fit the FitPrune recipe on the stage-1 model (projector-only checkpoint on the base LLM); timed as a stage."""
    recipe_file = run / "fitprune_recipe.json"
    cmd = [sys.executable, "-m", "dualspeed_patch.fitprune_recipe", "--model-path", str(run / "pretrain"),
           "--model-base", str(world / "models" / "tiny-llama"), "--data-path", str(data),
           "--image-folder", str(world / "images"), "--flops-budget", str(variant.fitprune_budget),
           "--output", str(recipe_file), "--device", "cpu", "--no-progress"]
    log(f"{variant.name}: fitting the FitPrune recipe (budget {variant.fitprune_budget})")
    wall = run_logged(cmd, env, run / "fit_recipe.log")
    return {"wall_s": round(wall, 1), "train_runtime_s": None}, recipe_file


def evaluate(variant: Variant, world: Path, run: Path, mode: str, recipe: Recipe, pruning_ratio: float = 0.9) -> dict:
    """Evaluate the run's LoRA checkpoint in `mode` on the world's questions: generated short answers (scored by
    `llava.eval.eval_tiny_world`; normal inference only) and each choice's likelihood with true and shuffled images
    (`model_vqa_choices`: accuracy, answer NLL, visual information gain, 95% intervals). Returns the generation
    scores (if any) with the choice summary under "choices"."""
    from llava.eval.eval_tiny_world import read_jsonl, score

    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    answers = run / "eval" / f"answers-{mode}.jsonl"
    answers.parent.mkdir(parents=True, exist_ok=True)
    model = ["--model-path", str(run / "llava-lora"), "--model-base", str(world / "models" / "tiny-llama"),
             "--image-folder", str(world / "images"), "--question-file", str(world / "eval" / "questions.jsonl"),
             "--conv-mode", recipe.sft_version, "--device", "cpu"]
    if mode != "normal":
        model += ["--pruning-ratio", str(pruning_ratio), "--vtp-method", variant.vtp_method]
    if mode == "pruned+isolator":
        model += ["--use-mode-isolator"]
    choices_dir = run / "eval" / f"choices-{mode}"
    wall = run_logged([sys.executable, "-m", "llava.eval.model_vqa_choices", *model, "--shuffled-images",
                       "--key-file", str(world / "eval" / "answers_key.jsonl"), "--out-dir", str(choices_dir)],
                      {}, run / "eval" / f"choices-{mode}.log")
    result = {}
    if mode == "normal":  # generated answers too, as a user's evaluation would produce them
        wall += run_logged([sys.executable, "-m", "llava.eval.model_vqa_loader", *model, "--overwrite", "--answers-file",
                            str(answers), "--temperature", "0", "--max_new_tokens", "8", "--batch-size",
                            str(EVAL_BATCH)], {}, run / "eval" / f"{mode}.log")
        result = score(read_jsonl(answers), read_jsonl(world / "eval" / "answers_key.jsonl"))
    result["choices"] = json.loads((choices_dir / "summary.json").read_text())["per_category"]
    result["eval_wall_s"] = round(wall, 1)
    return result


def choice_accuracy(scores: dict, mode: str = "normal") -> float:
    """Accuracy in `mode` of a run's `scores`: the share of questions whose most likely answer choice is right."""
    return scores[mode]["choices"]["overall"]["accuracy_true"]["mean"]


def modes_for(variant: Variant, wanted: tuple[str, ...]) -> list[str]:
    """The wanted inference modes that apply to `variant` (no isolator mode for a run trained without one)."""
    return [m for m in wanted if m != "pruned+isolator" or variant.has_isolator]


def same_run(cached: dict, wanted: dict) -> bool:
    """Whether a finished run serves: same variant, recipe and world, evaluated in at least the wanted modes."""
    def rest(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k != "modes"}

    return rest(cached) == rest(wanted) and set(wanted["modes"]) <= set(cached.get("modes", []))


def run_variant(variant: Variant, world: Path, out: Path, recipe: Recipe,
                modes: tuple[str, ...] = MODES, force: bool = False) -> dict:
    """Train and evaluate `variant` under `out/<name>/`, or reuse a finished result with the same settings."""
    run = out / variant.name
    result_file = run / "result.json"
    settings = json.loads(json.dumps({"variant": asdict(variant), "recipe": asdict(recipe), "world": str(world),
                                      "modes": modes_for(variant, modes)}))  # as stored (tuples become lists)
    if result_file.exists() and not force:
        cached = json.loads(result_file.read_text())
        if same_run(cached.get("settings", {}), settings):
            log(f"{variant.name}: reusing {result_file}")
            return cached
    if run.exists():
        import shutil

        shutil.rmtree(run)  # training scripts resume from checkpoints left in an output dir: start clean
    run.mkdir(parents=True)
    timings = train(variant, world, run, recipe)
    scores = {}
    for mode in settings["modes"]:
        log(f"{variant.name}: evaluating ({mode})")
        scores[mode] = evaluate(variant, world, run, mode, recipe, variant.pruning_ratio)
        log(f"{variant.name}: {mode} accuracy {100 * choice_accuracy(scores, mode):.1f}% (most likely choice)")
    result = {"settings": settings, "timings": timings, "scores": scores,
              "train_s": round(sum(t["wall_s"] for t in timings.values()), 1),
              "train_loop_s": round(sum(t["train_runtime_s"] or 0.0 for t in timings.values()), 1)}
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The options every tiny-world experiment CLI takes: --world, --out, --seed, --force."""
    parser.add_argument("--world", type=Path, default=None, help="tiny world to use (default: build/reuse playground/tiny)")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--force", action="store_true", help="retrain runs even when a finished result exists")


def world_and_out(args: argparse.Namespace) -> tuple[Path, Path]:
    """Resolved (world, out) for parsed `add_run_arguments` options; builds or reuses the default world and
    creates `out`."""
    from playground.build_tiny_world import ensure_built

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return (args.world or ensure_built()).resolve(), out
