"""The data doctor: what is wrong with a dataset before and after training (odd files, duplicates, leaks
across splits, likely label errors), written as doctor.json, grids and a page."""

from .checks import DuplicateGroup, Findings, LabelIssue, OddFile, examine
from .inventory import Inventory, take_inventory
from .output import EXCLUDE, JSON, MOVES, PAGE, add_section, summary, write_findings

__all__ = [
    "EXCLUDE",
    "JSON",
    "MOVES",
    "PAGE",
    "DuplicateGroup",
    "Findings",
    "Inventory",
    "LabelIssue",
    "OddFile",
    "add_section",
    "examine",
    "summary",
    "take_inventory",
    "write_findings",
]
