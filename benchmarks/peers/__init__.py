"""Peer packages from PyPI that ship their own weights: specs, their virtual environments, their runners.

Each peer runs in its own virtual environment under ``benchmarks/.envs/<peer>/`` (ignored by git), built on first
use by `ensure_env`, and is driven by ``benchmarks/peers/<module>_runner.py``, executed by that environment's
python. A runner reads images from a .npz file and writes probabilities and its class names (accuracy) or per-frame
timings of the peer's own detect-and-classify pipeline (latency); see `runner_common`.

Environments:
- ``isolated``: a fresh venv with the peer's own dependency set (TensorFlow for `fer`).
- ``layered``: a venv whose ``site-packages`` also sees the fer-demo environment's (a ``.pth`` file), for peers
  whose only requirements are packages fer-demo already has (torch, torchvision, OpenCV, Pillow). The peer itself
  is installed without dependencies; pins it declares that conflict are listed in `PeerSpec.notes`.

Peers considered and not run are listed in `SKIPPED` with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PEERS_DIR = Path(__file__).resolve().parent
ENVS_DIR = PEERS_DIR.parent / ".envs"
"""Root of the peers' virtual environments (``benchmarks/.envs/``, not tracked)."""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer package.

    Attributes:
        name: Short name used in results and paths.
        packages: The peer's PyPI distribution and pinned version first, then any other distribution installed
            without its dependencies.
        requirements: Requirements installed with their dependencies, before `packages`.
        layered: Whether the environment also sees the fer-demo environment's packages (see the module docstring).
        runner: Runner script in this folder.
        model: What the classifier is and what it was trained on, per its authors.
        detector: The face detector of its own pipeline.
        weights: Weight files inside the wheel (checked offline by the runner).
        license: Licence of the package (the weights' training data carry their own terms).
        url: Project page.
        variants: Model variants the runner accepts, the package default first; others are reported as
            ``<name>[<variant>]``.
        notes: How the benchmark calls it and anything that departs from its defaults.
    """

    name: str
    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    layered: bool
    runner: str
    model: str
    detector: str
    weights: str
    license: str
    url: str
    notes: str
    variants: tuple[str, ...] = ("default",)

    @property
    def package(self) -> str:
        """The peer's own distribution and version."""
        return self.packages[0]

    @property
    def env_dir(self) -> Path:
        return ENVS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.env_dir / "bin" / "python"


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec(
            name="fer",
            packages=("fer==25.10.3",),
            requirements=(
                "tensorflow-cpu==2.21.0",
                "opencv-python-headless==4.11.0.86",
                "pillow",
                "requests",
                "setuptools<81",
            ),
            layered=False,
            runner="fer_runner.py",
            model=(
                "mini-Xception (Arriaga et al. 2017), 64x64 gray, quantized TFLite by default; from "
                "oarriaga/face_classification, whose training script trains on the first 80% of fer2013.csv (the "
                "Training split) and uses the rest (PublicTest + PrivateTest) as validation data for checkpoint "
                "selection and early stopping, so its test numbers are optimistic"
            ),
            detector="OpenCV Haar cascade (scale 1.1, 5 neighbours, min 50 px)",
            weights="fer/data/emotion_model_quantized.tflite, fer/data/emotion_model.hdf5",
            license="MIT",
            url="https://github.com/justinshenk/fer",
            notes=(
                "Installed without its declared dependencies, plus the modules `fer.fer` imports: tensorflow-cpu "
                "instead of tensorflow (same kernels, no CUDA), OpenCV headless; facenet-pytorch (optional MTCNN "
                "detector) and the video extras (moviepy, pandas, matplotlib) are not needed by the default Haar "
                "pipeline. Accuracy: the data-set crop is resized to the model's 64x64 and normalised as "
                "`FER.detect_emotions` does, then passed to `FER._classify_emotions` (detect_emotions rounds scores "
                "to 2 decimals, which ties argmaxes). Both the default TFLite model and the Keras .hdf5 model "
                "(`use_tflite=False`) are evaluated."
            ),
            variants=("tflite", "keras"),
        ),
        PeerSpec(
            name="what-the-face",
            packages=("what-the-face-classification==0.0.27",),
            requirements=("setuptools<81",),
            layered=True,
            runner="what_the_face_runner.py",
            model="3-layer CNN (tanh) with a 3-layer MLP head, 48x48 gray; trained on FER2013 (split not documented)",
            detector="OpenCV Haar cascade (scale 1.3, 5 neighbours); classifies the first detection only",
            weights="what_the_face_classification/active_model.pth (a state dict, loaded with weights_only)",
            license="GPL-3.0 (the LICENSE file in the wheel; its PyPI classifier says MIT)",
            url="https://gitlab.com/jms.rdgrs/inference_package",
            notes=(
                "Its requirements (numpy, opencv-python, pillow, setuptools, torch, torchvision; unpinned) are met by "
                "the fer-demo environment (opencv-contrib-python provides the same cv2), plus setuptools<81 for "
                "pkg_resources. Accuracy: the crop goes through the classifier's own transform (resize 48, center "
                "crop, gray, to tensor) and network, bypassing the Haar step. Latency: `Image_classifier.predict` "
                "on the PIL image; it returns one face per image whatever the number of faces."
            ),
        ),
        PeerSpec(
            name="facial-emotion-recognition",
            packages=("facial-emotion-recognition==0.3.4", "facenet-pytorch==2.6.0"),
            requirements=("requests",),
            layered=True,
            runner="facial_emotion_recognition_runner.py",
            model=(
                "small CNN (NetworkV2, per-class sigmoid outputs), 48x48 gray, FER2013 class order; its training data "
                "are not documented (the weight file records an accuracy of 0.957 on unnamed data)"
            ),
            detector="MTCNN from facenet-pytorch (weights inside the facenet-pytorch wheel)",
            weights="facial_emotion_recognition/model/model.pkl (state dict + accuracy; loaded with weights_only)",
            license="MIT",
            url="https://pypi.org/project/facial-emotion-recognition/",
            notes=(
                "An sdist from 2020 built against torch 1.4; facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and "
                "Pillow<10.3, so both are installed without dependencies and run on the fer-demo environment's torch. "
                "Its constructor loads CUDA-saved tensors without map_location, which fails on any machine without "
                "CUDA; the runner constructs it with torch.load's map_location set to the CPU. "
                "Accuracy: the crop goes through its own transform (resize 48x48, normalise 0.5/0.5) and network. "
                "Latency: `EmotionRecognition.recognise_emotion` on the BGR frame (detection, classification of "
                "every face and drawing the boxes)."
            ),
        ),
    )
}
"""Peers run by the full benchmark, by name."""

SKIPPED: dict[str, str] = {
    "rmn==3.3.0": "no weights in the wheel: downloads its checkpoints from the Hugging Face Hub (hf_hub_download)",
    "py-feat==2.1.5": "no weights in the wheel: downloads its models from the Hugging Face Hub (hf_hub_download)",
    "hsemotion==0.3.0, hsemotion-onnx==0.3.1": "no weights in the package: downloads them from GitHub on first use",
    "emotiefflib==1.1.1": "no weights in the wheel: downloads them from GitHub on first use",
    "emotion-model==0.0.6": "pins tensorflow-intel==2.16.1, which has no Linux wheel on PyPI (five classes, no face "
    "detector)",
}
"""Peer packages considered and not run, with the reason."""


_NO_NETWORK = {key: "http://127.0.0.1:9" for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
"""Runners get an unreachable proxy, so a peer that tries to download anything fails instead of fetching it."""


def result_name(spec: PeerSpec, variant: str) -> str:
    """Name of a peer variant in results: the peer's name for its default variant, else ``name[variant]``."""
    return spec.name if variant == spec.variants[0] else f"{spec.name}[{variant}]"


class PeerError(RuntimeError):
    """A peer's environment could not be built or its runner failed; the message says which and why."""


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    logger.info("%s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise PeerError(f"pip failed ({' '.join(args)}):\n{result.stderr[-3000:]}")


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def env_ready(spec: PeerSpec) -> bool:
    """Whether the peer's environment was completely built (its marker file exists)."""
    return (spec.env_dir / "fer-demo-peer.json").is_file()


def ensure_env(spec: PeerSpec) -> Path:
    """Build the peer's virtual environment unless it is complete; returns its python.

    Raises:
        PeerError: An install step failed.
    """
    if env_ready(spec):
        return spec.python
    logger.info("Building the environment of %s in %s (first use; this can take minutes)", spec.name, spec.env_dir)
    venv.EnvBuilder(clear=True, with_pip=True).create(spec.env_dir)
    if spec.layered:
        base = Path(sysconfig.get_paths()["purelib"])
        (_site_packages(spec.python) / "_fer_demo_base.pth").write_text(f"{base}\n")
    if spec.requirements:
        _pip(spec.python, *spec.requirements)
    _pip(spec.python, "--no-deps", *spec.packages)
    freeze = subprocess.run(
        [str(spec.python), "-m", "pip", "freeze", "--local"], capture_output=True, text=True, check=True
    ).stdout.split()
    marker = {"package": spec.package, "layered": spec.layered, "python": sys.version.split()[0], "freeze": freeze}
    (spec.env_dir / "fer-demo-peer.json").write_text(json.dumps(marker, indent=1))
    return spec.python


def run_runner(spec: PeerSpec, args: list[str], timeout: float) -> None:
    """Run the peer's runner script in its environment, without network, at this process's CPU priority.

    Raises:
        PeerError: The runner exited with an error or ran past `timeout` seconds.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONNOUSERSITE="1", **_NO_NETWORK)
    for key in ("PYTHONPATH", "no_proxy", "NO_PROXY"):
        env.pop(key, None)
    command = [str(spec.python), str(PEERS_DIR / spec.runner), *args]
    logger.info("Running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise PeerError(f"{spec.name}: runner ran past {timeout:.0f} s") from error
    if result.returncode != 0:
        raise PeerError(f"{spec.name}: runner failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
