"""Where a Scheme may touch files: inside its project folder, or under a path the user gave
explicitly on the command line.

A scheme.star can come from anywhere (a shared project folder, another group's scheme), so its
file operators (touch, copy, move, delete, and the ones that read: file_exists, read_star,
count_images, glob) resolve every path to its real location (symbolic links followed) and refuse
one outside these roots with one InputError naming the operator and the path.
"""
from __future__ import annotations

import os

from ..errors import InputError


class Sandbox:
    def __init__(self, project: str, allowed=()):
        self.project = os.path.realpath(project)
        self.roots = [self.project] + [os.path.realpath(os.path.join(self.project, str(a))) for a in allowed if a]

    def inside(self, path: str) -> bool:
        real = os.path.realpath(os.path.join(self.project, str(path)))
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def check(self, path: str, who: str) -> str:
        """``path`` (relative to the project) as an absolute path, if it lies inside the roots."""
        if not str(path) or str(path) == "undefined":
            raise InputError("no file name (the variable is empty or undefined)", field=who)
        if not self.inside(path):
            raise InputError("%s lies outside the project folder %s; give it (or a folder above it) on the command "
                             "line with --allow_path to let the scheme use it" % (path, self.project), field=who)
        return os.path.join(self.project, str(path))
