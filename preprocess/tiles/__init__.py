"""Cells -> tiles -> tasks: the cell table, regions, tiling, tile images and the task payloads Label Studio imports."""
