"""The executor: runs started runs' graphs and reports how they ended."""
