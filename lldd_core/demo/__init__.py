"""Built-in demo models and concept datasets, made by lldd itself (nothing is downloaded).

Demo models are addressed as ``demo:<name>`` wherever a model id is accepted (``demo:gpt2-small``
is the default of the dashboard and CLI).
"""

from .build import (
    DEFAULT_DEMO,
    DEMO_CONFIGS,
    DemoConfig,
    DemoInfo,
    build_demo,
    demo_dir,
    demo_path,
    is_built,
    read_info,
)

DEMO_PREFIX = "demo:"


def is_demo(model: str) -> bool:
    return isinstance(model, str) and model.startswith(DEMO_PREFIX)


def demo_name(model: str) -> str:
    return model[len(DEMO_PREFIX) :]


__all__ = [
    "DEFAULT_DEMO",
    "DEMO_CONFIGS",
    "DEMO_PREFIX",
    "DemoConfig",
    "DemoInfo",
    "build_demo",
    "demo_dir",
    "demo_name",
    "demo_path",
    "is_built",
    "is_demo",
    "read_info",
]
