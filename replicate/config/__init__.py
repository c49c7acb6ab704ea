"""`compose(paper, profile, overrides)`: the only Hydra entry point of the workbook.

It composes `conf/config.yaml` with the paper and profile groups selected, expands
`experiment=<name>` into that experiment's group choices and overrides (from
`paper.experiments`), lets the profile swap the dataset (the reduced profile trains on
Fashion-MNIST where the paper used CIFAR or ImageNet), applies the paper's `scale` for the
profile (`paper.scale.reduced`: e.g. the image size and widths at which a 224-px network is
trained on two CPU cores), and appends the user's overrides last so that they win. Bad names
raise `ConfigError` with the key and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ConfigError, choices
from ..validate import check_values
from .hashing import config_hash, run_spec  # noqa: F401  (the runs' hash: replicate.config.config_hash)
from .schema import check_paper

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def groups() -> dict[str, list[str]]:
    """Each config group and the options it offers, e.g. {'profile': ['full', 'reduced'], ...}."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir()
    }


def papers() -> list[str]:
    return groups()["paper"]


def _check_group_choice(key: str, value: str) -> None:
    options = groups().get(key)
    if options is not None and value not in options:
        raise ConfigError(f"Unknown {key} {value!r} (override '{key}={value}').{choices(value, options)}")


def _split(overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull `experiment=NAME` out of the overrides and check the group choices in the rest."""
    experiment, rest = None, []
    for item in overrides:
        if isinstance(item, str) and item.startswith("~") and "=" not in item:  # Hydra's deletion: ~key
            rest.append(item)
            continue
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"Override {item!r} is not of the form key=value (e.g. 'recipe.max_steps=100', 'data=cifar10')."
            )
        key, value = item.split("=", 1)
        key = key.lstrip("+~")
        if key == "experiment":
            experiment = value
            continue
        if key in ("paper", "profile"):
            raise ConfigError(f"Pass the {key} as compose()'s argument, not as the override {item!r}.")
        _check_group_choice(key, value)
        rest.append(item)
    return experiment, rest


def _conf_state() -> tuple:
    """What the files under conf/ are now (name, size, modification time): a composition is
    reused only while they have not changed (a notebook kernel sees an edited yaml)."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(CONF_DIR.rglob("*.yaml")))


_COMPOSED: dict[tuple, bytes] = {}
_SHARED: dict[tuple, DictConfig] = {}
_DIGESTS: dict[tuple, str] = {}
_CHECKED: set[tuple] = set()
_TASKS: dict[tuple, str | None] = {}


def compose_cache_dir() -> Path:
    """Where compositions are kept across processes: `$REPLICATE_CACHE_DIR/compose`, by default
    .cache/compose/ in the project (a composition depends on conf/ and Hydra alone, so every run
    folder and test may share it)."""
    return Path(os.environ.get("REPLICATE_CACHE_DIR") or PROJECT_ROOT / ".cache") / "compose"


def _conf_digest(state: tuple) -> str:
    """The contents of conf/ and the versions of Hydra and OmegaConf, hashed (once per state of
    the files): a stored composition is a pickled OmegaConf object."""
    if state not in _DIGESTS:
        import hydra
        import omegaconf

        digest = hashlib.sha256(f"{hydra.__version__} {omegaconf.__version__}".encode())
        for name, _, _ in state:
            digest.update(name.encode() + b"\0" + Path(name).read_bytes() + b"\0")
        _DIGESTS[state] = digest.hexdigest()
    return _DIGESTS[state]


def _hydra(overrides: list[str], *, shared: bool = False) -> DictConfig:
    """Hydra's composition of conf/config.yaml with `overrides`, made once for the same overrides
    and conf/ files: kept in the process (a notebook composes the same paper many times) and on
    disk (`compose_cache_dir`: about 0.3 s a composition, and a notebook kernel, a DVC stage or a
    test process would each redo them). Both keep it pickled: a fresh copy for each caller in
    about 2 ms, where a deep copy takes 10 ms and parsing YAML 50 ms. Interpolations stay
    unresolved, so the environment (`oc.env`) is read at use, not cached. With `shared`, the
    caller only reads: one read-only copy serves every such call (compose reads the paper and
    profile alone once per experiment)."""
    state = _conf_state()
    key = (tuple(overrides), state)
    fresh = None  # the first copy, loaded while reading the stored composition
    if key not in _COMPOSED:
        if len(_COMPOSED) >= 1024:
            _COMPOSED.clear()
            _SHARED.clear()
        _COMPOSED[key], fresh = _stored_composition(list(overrides), _conf_digest(state))
        _SHARED.pop(key, None)
    if not shared:
        return fresh if fresh is not None else pickle.loads(_COMPOSED[key])
    if key not in _SHARED:
        cfg = fresh if fresh is not None else pickle.loads(_COMPOSED[key])
        OmegaConf.set_readonly(cfg, True)
        _SHARED[key] = cfg
    return _SHARED[key]


def _stored_composition(overrides: list[str], conf_digest: str) -> tuple[bytes, DictConfig]:
    """The pickled composition from disk, or made now and stored (written whole, then renamed, so
    that a reader never sees half a file), and one copy of it loaded. An unreadable stored file is
    composed again."""
    name = hashlib.sha256(json.dumps([overrides, conf_digest]).encode()).hexdigest()[:32]
    path = compose_cache_dir() / f"{name}.pkl"
    if path.is_file():
        try:
            stored = path.read_bytes()
            loaded = pickle.loads(stored)
            if isinstance(loaded, DictConfig):
                return stored, loaded
        except Exception:  # noqa: BLE001 - a damaged cache entry: compose again
            pass
    cfg = _compose_now(overrides)
    OmegaConf.set_struct(cfg, True)
    stored = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_bytes(stored)
        os.replace(staging, path)
    except OSError:  # a read-only checkout composes every time
        pass
    return stored, cfg


def _compose_now(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (ConfigCompositionException, OverrideParseException, MissingConfigException) as exc:
        # Hydra's message names the key ("Could not override 'recipe.lrr'. Key 'lrr' is not in struct").
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(
            f"Bad override: {exc}{cause}. Keys must exist in conf/ (prefix a new key with '+'); "
            "group choices are listed by `python -m replicate groups`."
        ) from None
    finally:
        GlobalHydra.instance().clear()


def compose_defaults(profile: str = "reduced") -> DictConfig:
    """conf/config.yaml with its default groups at `profile`: paths, trainer and speed settings
    that do not depend on which paper is chosen."""
    _check_group_choice("profile", profile)
    return _anchor_paths(_hydra([f"profile={profile}"]))


def compose(paper: str, profile: str = "reduced", overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved configuration of `paper` at `profile`, with Hydra `overrides` applied.

    `overrides` may hold `experiment=<name>` to select one of the paper's experiments.
    """
    _check_group_choice("paper", paper)
    _check_group_choice("profile", profile)
    experiment, user = _split(list(overrides))
    base = [f"paper={paper}", f"profile={profile}"]
    if experiment is None:
        cfg = _anchor_paths(_hydra(base + user))
        check_paper_file(cfg)
        check_floors(cfg)
        return _record_overrides(cfg, user)
    # First the paper and profile alone, with the user's overrides of the profile (e.g. its
    # substitutions; the others may name keys that only the experiment's groups have), then
    # everything in order: experiment, then the user's.
    cfg = _hydra(base + [o for o in user if o.lstrip("+~").startswith("profile.")], shared=True)
    check_paper_file(cfg)
    check_floors(cfg)

    known = cfg.paper.get("experiments") or {}
    if experiment not in known:
        raise ConfigError(
            f"Unknown experiment {experiment!r} for paper {paper!r} (override 'experiment=...')."
            f"{choices(experiment, known)}"
        )
    substitute = {**(cfg.profile.get("substitute_data") or {}), **(cfg.profile.get("substitute_detection") or {})}
    expanded, data, model = [], None, None
    for item in _with_presets(cfg.paper, experiment):
        key, value = item.split("=", 1)
        if key == "data" and value in substitute:
            value = substitute[value]
        if key == "data":
            data = value
        if key == "model":
            model = value
        expanded.append(f"{key}={value}")
    # The paper's own scale for this profile (e.g. the reduced profile's image size and widths
    # for networks designed for 224 px), after the experiment and before the user's overrides.
    # A paper with both kinds of experiment (YOLOv4: its classifier ablation and its detector)
    # gives one list per kind: {classification: [...], detection: [...]}; a paper whose
    # experiments use several models (YOLOv2 Table 2's YOLOv1 columns) may give one per model
    # config, which takes precedence over the kind's.
    scale = (cfg.paper.get("scale") or {}).get(profile) or []
    if not isinstance(scale, (list, ListConfig)):
        kinds = {"classification", "detection"}
        unknown = set(scale) - kinds - set(groups()["model"])
        if unknown:
            raise ConfigError(f"conf/paper/{paper}.yaml: scale.{profile} has {sorted(unknown)}; a scale is a list of "
                              "overrides, or one per kind ({classification: [...], detection: [...]}) or per "
                              "model config (conf/model/<name>.yaml).")
        chosen = model if model in scale else ("detection" if is_detection_data(data) else "classification")
        scale = scale.get(chosen) or []
    scale = list(scale)
    cfg = _hydra(base + expanded + scale + user)
    with _writable(cfg):
        cfg.experiment = experiment
    check_values(cfg)
    return _record_overrides(_anchor_paths(cfg), user)


def _with_presets(paper: DictConfig, experiment: str) -> list[str]:
    """The experiment's list with each `preset=<name>` replaced, in place, by the paper's
    `presets.<name>` list (the overrides several experiments share, e.g. YOLOv4's way of reading
    COCO)."""
    presets = paper.get("presets") or {}
    items = []
    for item in paper.experiments[experiment]:
        key, _, value = str(item).partition("=")
        if key != "preset":
            items.append(str(item))
        elif value in presets:
            items.extend(str(i) for i in presets[value])
        else:
            raise ConfigError(f"conf/paper/{paper.id}.yaml: experiment {experiment} asks for preset={value}, which "
                              f"`presets` does not define.{choices(value, presets)}")
    return items


def _record_overrides(cfg: DictConfig, user: Sequence[str]) -> DictConfig:
    """`cfg.overrides`: the user's overrides, so that a report says how it was made (not in the
    run hash: the values they set are)."""
    with _writable(cfg):
        cfg.overrides = list(user)
    return cfg


def check_paper_file(cfg: DictConfig) -> None:
    """conf/paper/<id>.yaml against its schema (`schema.check_paper`), once per state of conf/."""
    key = (cfg.paper.id, _conf_state())
    if key not in _CHECKED:
        check_paper(OmegaConf.to_container(cfg.paper, resolve=False), str(cfg.paper.id))
        _CHECKED.add(key)


def check_floors(cfg: DictConfig) -> None:
    """A profile that has floors floors every run it plans, and only those: a planned run without
    one could fail unnoticed, and a floor naming no planned run checks nothing."""
    paper = cfg.paper
    for profile, floors in (paper.get("floors") or {}).items():
        planned = list((paper.get("plan") or {}).get(profile) or [])
        floors = dict(floors or {})
        extra = [name for name in floors if name not in planned]
        missing = [name for name in planned if name not in floors]
        if extra or missing:
            raise ConfigError(
                f"conf/paper/{paper.id}.yaml: floors.{profile} must name exactly the runs of plan.{profile}"
                + (f"; it names {extra}, which plan.{profile} does not name" if extra else "")
                + (f"; it has no floor for {missing}" if missing else "") + ".")
        bad = {name: value for name, value in floors.items()
               if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1}
        if bad:
            raise ConfigError(f"conf/paper/{paper.id}.yaml: floors.{profile} are fractions in (0, 1), not {bad}.")


def is_detection_data(name: str | None) -> bool:
    """Whether the data config `name` (conf/data/<name>.yaml) declares `task: detection`: scored by
    mAP (`replicate.runs.detection`) rather than top-1 error."""
    path = CONF_DIR / "data" / f"{name}.yaml"
    if not path.is_file():
        return False
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _TASKS:
        _TASKS[key] = OmegaConf.load(path).get("task")
    return _TASKS[key] == "detection"


def _anchor_paths(cfg: DictConfig) -> DictConfig:
    """Relative paths are taken from the project root, so a notebook run from notebooks/ (as
    JupyterLab does) reads and writes the same data/, runs/ and reports/ as the shell."""
    with _writable(cfg):
        for key, value in cfg.paths.items():
            if not Path(value).is_absolute():
                cfg.paths[key] = str(PROJECT_ROOT / value)
    return cfg


class _writable:
    """Temporarily lift OmegaConf's struct flag (Hydra returns struct configs)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        OmegaConf.set_struct(self.cfg, False)
        return self.cfg

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, True)
