"""Package names loaded on first use (PEP 562), so that importing one light submodule does not import
its siblings' heavy dependencies (pandas, scipy, h5py) with it."""
from importlib import import_module


def lazy_attributes(package: str, where: dict):
    """A module ``__getattr__`` for ``package`` that imports ``where[name]`` (a submodule) when
    ``name`` is first asked for."""
    def __getattr__(name):
        if name in where:
            return getattr(import_module("." + where[name], package), name)
        raise AttributeError("module %r has no attribute %r" % (package, name))
    return __getattr__
