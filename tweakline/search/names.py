"""How an unknown plug-in name is reported: the same words pydantic used for the former enums.

The wording lives with :class:`tweakline.errors.Problem` (:func:`tweakline.errors.unknown_name`),
so every registry (search algorithms, pruners, deploy targets) reports an unknown name alike.
"""

from __future__ import annotations

from tweakline.errors import unknown_name

__all__ = ["unknown_name"]
