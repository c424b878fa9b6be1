"""Staging: files a source wrote locally before discovery (`files`) and their removal once the
pipeline is done with them (`cleanup`)."""
