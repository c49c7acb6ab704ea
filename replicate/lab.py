"""JupyterLab: notebooks under notebooks/ are saved without outputs (a pre-save hook, set up by
`jupyter_server_config.py`, which `make lab` uses).

The notebooks are DVC dependencies and are committed clean: saving one in Lab after running it must
not change the file, or its stage would rerun and the "committed without outputs" check would fail.
The outputs stay in the open Lab tab; only the file on disk is stripped (nbstripout), down to the
committed form (the language's version and the like that a kernel adds are removed too).
"""

from __future__ import annotations

from pathlib import Path

from .config import PROJECT_ROOT

# What a kernel adds to the notebook's metadata and the committed notebooks do not hold.
KERNEL_METADATA = [f"metadata.language_info.{key}" for key in
                   ("version", "codemirror_mode", "file_extension", "mimetype", "nbconvert_exporter", "pygments_lexer")]


def strip_on_save(model: dict, path: str, contents_manager, **kwargs) -> None:
    """Jupyter Server's pre-save hook: strip the outputs of a notebook saved under notebooks/."""
    import nbformat
    from nbstripout import strip_output

    if model.get("type") != "notebook" or not model.get("content"):
        return
    where = (Path(getattr(contents_manager, "root_dir", ".")) / path).resolve()
    if where.parent != (PROJECT_ROOT / "notebooks").resolve():
        return  # executed copies in reports/ keep their outputs
    notebook = nbformat.from_dict(model["content"])
    model["content"] = strip_output(notebook, keep_output=False, keep_count=False, keep_id=True,
                                    extra_keys=KERNEL_METADATA)
