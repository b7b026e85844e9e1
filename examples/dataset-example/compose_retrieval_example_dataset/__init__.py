"""An example compose-retrieval dataset plugin: your images in a folder per class, and CSV modification rows."""

import csv

from compose_retrieval import IMAGE_SUFFIXES, DatasetError, FileDataset, ImageFiles, RetrievalProtocol, Triplets, hookimpl


class ExampleFolders(FileDataset):
    """Your images, a folder per class, and CSV rows (source image, text, target class)."""

    name = "example-folders"
    layout = "DATA_ROOT/images/<class>/<image>, DATA_ROOT/train.csv and test.csv with the columns source,text,target"
    protocol_names = ("test",)
    default_loss = "batch_softmax"

    def read(self):  # FileDataset has checked data_root and set self.root, self.preprocessing
        found = sorted(p for p in self.root.glob("images/*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.paths = self.keep_readable(found)  # drops unreadable images if the user gives skip_unreadable=true
        if not self.paths:
            raise DatasetError(f"{self.name}: no images in {self.root / 'images'}; expected {self.layout}")
        self.classes = [p.parent.name for p in self.paths]  # an image's class: its folder
        self.rows = {split: self.read_rows(split) for split in ("train", "test")}

    def read_rows(self, split):
        """(source image index, text, target class) of each row of <split>.csv."""
        path, index = self.root / f"{split}.csv", {p: i for i, p in enumerate(self.paths)}
        if not path.is_file():
            raise DatasetError(f"{self.name}: {path} not found; expected {self.layout}")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != ["source", "text", "target"]:
                raise DatasetError(f"{path}: the header must be source,text,target, not {','.join(reader.fieldnames or [])}")
            rows = [(self.root / "images" / r["source"], r["text"], r["target"]) for r in reader]
        for line, (source, _, target) in enumerate(rows, start=2):
            if source not in index and source not in self.unreadable:
                raise DatasetError(f"{path} line {line}: no image {source}")
            if target not in self.classes:
                raise DatasetError(f"{path} line {line}: no class folder images/{target}")
        return [(index[source], text, target) for source, text, target in rows if source in index]

    def train_set(self, seed=0, protocol=None):
        """Every training row, once with each image of its target class."""
        rows = [(s, text, t) for s, text, target in self.rows["train"] for t, c in enumerate(self.classes) if c == target and t != s]
        if not rows:
            raise DatasetError(f"{self.name}: train.csv has no row whose target class holds an image other than its source")
        sources, texts, targets = zip(*rows)
        return Triplets(ImageFiles(self.paths, self.preprocessing), sources, texts, targets)

    def train_texts(self):
        return [text for _, text, _ in self.rows["train"]]

    def build_protocol(self, name):
        """Every image is in the gallery; a hit is any image of the target class (the source itself is not ranked)."""
        return RetrievalProtocol.from_queries(name, ImageFiles(self.paths, self.preprocessing), self.classes, self.rows["test"])


@hookimpl
def register_datasets(register):
    register("example-folders", ExampleFolders)
