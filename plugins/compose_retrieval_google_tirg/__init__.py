"""Import of the authors' released TIRG checkpoints (github google/tirg) into safetensors zoo files."""

from compose_retrieval import hookimpl

from .importer import RELEASES, import_tirg


@hookimpl
def register_commands(zoo):
    from .commands import import_tirg_command

    zoo.command("import-tirg")(import_tirg_command)
