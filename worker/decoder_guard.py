"""Imported only by the decoders' forkserver, first (``set_forkserver_preload`` in
``decoding``): the forkserver then dies with the process that started it, as each decoder
dies with the forkserver. A worker child killed by the OOM killer leaves no forkserver and
no decoders behind (about 350 MB per kill before). Nothing else may import it: the process
importing it is bound to its parent's life.
"""

from __future__ import annotations

from worker.parent_death import die_with_parent

die_with_parent()
