"""Only the compiled part of the build; everything else is in setup.cfg.

``chatserv._fanout`` (the fan-out write loop, see chatserv/fanout.py) is
optional: without a C compiler or the Python headers the build goes on
without it and chatserv uses the pure-Python loop.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("chatserv._fanout", ["chatserv/_fanout.c"], optional=True),
    ],
)
