"""Replay: the real protocol on a data set whose masks are known, with simulated MDs.

`sim` (no Django) holds the mathematics: mask degradations, Dice, the simulated MD's pick,
intervals. `plots` (no Django) draws the report's PNGs with Pillow. `services` runs a replay
through the platform's own services and Celery workers; `report` measures it from the rows.
"""
