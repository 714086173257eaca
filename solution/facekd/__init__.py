"""facekd: distil, prune and ship sub-1.82M face-parsing students.

Kept import-light on purpose: the exported solution ships `facekd.labels` and
`facekd.inference`, which need only torch, numpy and pillow.
"""

__version__ = "0.1.0"
