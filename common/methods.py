"""The compression methods, one entry each: what every table, figure and
Part 4 says of a method's models, written once.

Each entry: the row field that tells one model of the method from another
(`key`), the label in tables and on figure points, the legend and colour
in figures, and where Part 4 finds its models (the part's results file and
section, the values it deploys by default, the command that makes one).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    family: str
    legend: str
    colour: str
    key: str = None
    table: str = "{family}"      # format fields: the row's, and "percent" (100 x key)
    point: str = ""
    results: tuple = None        # (results file, section, default values, command)

    def fields(self, row):
        value = row.get(self.key, 0) if self.key else 0
        return {**row, "family": self.family, "value": value, "percent": f"{100 * value:g}"}

    def label(self, row):
        """The model's name in tables: "Tucker k = 4", "pruned 90%", ..."""
        return self.table.format(**self.fields(row))

    def short(self, row):
        """Its label on a figure point: "k4", "90%", "−50%", "≤0.1"."""
        return self.point.format(**self.fields(row))

    def file_name(self, value):
        """Its model's name in files and Part 4's rows: tucker_k4, pruned_90, ..."""
        return f"tucker_k{value}" if self.family == "tucker" else \
            f"{self.family}_{100 * value:g}"


METHODS = {m.family: m for m in (        # in reading order
    Method("original", "original", "k", table="original"),
    Method("tucker", "Tucker-2 (k), fine-tuned", "C1", "k", "Tucker k = {k}", "k{k}",
           ("part3.json", "sweep", (4,), "python part3_tucker.py --k {}")),
    Method("pruned", "weights pruned (share), fine-tuned", "C0", "sparsity",
           "pruned {percent}%", "{percent}%",
           ("part2.json", "finetune", (0.9,), "python part2_prune.py --fine-tune-sparsities {}")),
    Method("structured", "filters removed (share of FLOPs), fine-tuned", "C2",
           "flops_reduction", "filters removed, −{percent}% FLOPs", "−{percent}%",
           ("part2_structured.json", "finetuned", (0.5, 0.55, 0.65, 0.75),
            "python part2_structured.py --flops-reductions {}")),
    Method("search", "searched for a latency budget", "C3", "budget",
           "searched for {value:g} of the time", "≤{value:g}",
           ("part5_budget.json", "front", (), "python part5_budget.py")),
)}
