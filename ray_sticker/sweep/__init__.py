"""Ray Tune sweeps over experiment configs: definitions (:mod:`.spec`), the runner whose
trials are Ray Train + DeepSpeed runs (:mod:`.runner`) and the outputs (:mod:`.report`)."""

from ray_sticker.sweep.spec import SweepSpec, list_sweeps, load_sweep

__all__ = ["SweepSpec", "list_sweeps", "load_sweep"]
