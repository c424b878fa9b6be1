"""Contracts every service shares: the event models, the topic list, the settings and the
errors that decide what the bus does with a message."""
