"""The workbook's package: `config` composes, `runs` trains, `measure` counts and times, `report`
writes the papers' tables (the README's layout section says what each place holds)."""

import atexit
import gc

# A process that has imported torch, torchvision and Lightning spends 1-2 s of its exit in the
# interpreter's final garbage collection (a notebook kernel's shutdown, a CLI call, a DVC stage).
# Everything the workbook writes is closed when written, so that last sweep finds nothing to
# finish; freezing the heap at exit skips it (reference counting still frees what it frees).
atexit.register(gc.freeze)
