"""Optional integrations for corestore.

* :mod:`corestore_contrib.failpoint` — real fault injection through SQLite's own I/O: an apsw
  failpoint VFS and an ``LD_PRELOAD`` shim for the stdlib driver.
* :mod:`corestore_contrib.pytest_plugin` — pytest fixtures over both (``tmp_store``,
  ``failpoint``, ``preload_failpoint``), registered through the ``pytest11`` entry point.

Nothing is imported from here: import the submodule you need.
"""
__all__: list[str] = []
