"""The study browser: pages served by the API at `/`, `/studies/{uid}` and `/signin`.

A small static app (plain HTML, CSS and JavaScript modules, no build step, no framework):
every page is a shell the API fills through its own `/v1` routes, with the browser's
session cookie. See `router.py` for why and for the headers every page carries.
"""
