"""A complete analyzer plugin: rows and errors per class, with the confusion counts merged by sum."""

import numpy as np

import fragility
from fragility.analysis import Analyzer, Result, Table


class ClassCount(Analyzer):
    """Rows, errors and the most frequent wrong prediction per class."""

    name = "classcount"
    states = {"confusion": "sum"}  # how each state merges: "sum" or "cat"

    def columns(self):
        return {"label", "pred"}

    def update(self, chunk):
        C = self.spec.num_classes
        confusion = np.zeros((C, C), dtype=np.int64)
        np.add.at(confusion, (chunk["label"], chunk["pred"]), 1)
        self.accumulate(chunk.group, "confusion", confusion)

    def compute(self):
        result = Result(self.name)
        groups = result.data.setdefault("groups", {})  # the layout of every analyzer's data: one entry per group
        for group, state in self.state.items():
            m = state["confusion"]
            wrong = m - np.diag(np.diag(m))
            g = self.spec.group(group)
            classes = [{"class": name, "n": int(m[c].sum()), "errors": int(wrong[c].sum()),
                        "most_confused_with": int(wrong[c].argmax()) if wrong[c].any() else None, "confusion": m[c].tolist()}
                       for c, name in enumerate(self.spec.class_names)]
            groups[group] = {"split": g.split, "epoch": g.epoch, "classes": classes}
            rows = [[e["class"], e["n"], e["errors"], e["most_confused_with"]] for e in classes]
            result.tables.append(Table(f"{group}: errors", ["class", "n", "errors", "most confused with"], rows))
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("classcount", ClassCount)
