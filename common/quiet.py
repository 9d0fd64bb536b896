"""Holding back what C++ libraries print to the terminal."""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_stderr(replay=True):
    """Hold back what C++ code writes to file descriptor 2 inside the block
    (Python's sys.stderr included); replay it if the block raises and `replay`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            if replay:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
