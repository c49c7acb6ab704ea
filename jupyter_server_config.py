# JupyterLab for this project (`make lab` passes it with --config): notebooks under notebooks/ are
# saved without outputs, so that saving one neither reruns its DVC stage nor breaks the
# "committed without outputs" check. See replicate/lab.py.
from replicate.lab import strip_on_save

c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)
c.FileContentsManager.pre_save_hook = strip_on_save
