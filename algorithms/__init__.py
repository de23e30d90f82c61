"""Advantages, losses and rewards as pure tensor functions, registered by name; the bottom layer of the suite."""
