"""Converters from the papers' public dataset releases to canonical Parquet.

``base.py`` holds the interface (a converter scans a release's index files), ``runner.py``
the parallel conversion on Ray Data, the validation report and the publication; every
other module here is one release format and registers itself on import.
"""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "runner"):
        importlib.import_module(f"{__name__}.{_m.name}")
