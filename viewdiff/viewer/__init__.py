"""``infer.py view``: what the commands wrote, in a browser, on viser.

- ``sources``: what a PATH is (a 3DGS PLY, a generation, an SDS or edit-scene run), read into
  plain arrays; no viser here;
- ``scene``: a loaded source put into a viser server: splats, camera frustums with their views,
  the object box, the progress slider, the before/after toggle, several sources side by side;
- ``live``: the panel that generates and distils from an export inside the page;
- ``server``: the server on a host and port (a port in use is refused, not moved);
- ``browser``: a headless Chromium for ``--screenshot`` and the browser tests.

viser and playwright are the ``viewer`` extra (``pip install viewdiff[viewer]``); nothing else in
the package imports this one.
"""
