"""The browser demo: drop in a picture of a part, get back its CadQuery program, a 3D view and STEP/STL files.

* :mod:`cadcoder.demo.uploads` checks an uploaded file (size, decodability, transparency) before the
  model sees it, with a message that says what to do.
* :mod:`cadcoder.demo.examples` makes the page's example images: synthetic parts rendered in the
  GenCAD-Code look through the sandbox, cached on disk.
* :mod:`cadcoder.demo.service` holds the model and a warm sandbox and turns one request into files, a
  candidate table and messages. It does not import Gradio, so it is tested without a browser.
* :mod:`cadcoder.demo.page` lays the page out with Gradio (the ``demo`` extra) and serves it;
  ``app.py`` at the repository root is the Hugging Face Spaces entry point, ``cadcoder demo`` the CLI one.
"""

from cadcoder.demo.service import DemoResult, DemoService

__all__ = ["DemoResult", "DemoService"]
