"""The family's run options, in a module that imports no torch: ``zarrstain predict --help``
reads it (entry point ``zarrstain.options``) to make the ``--std-scale`` flag."""

from zarrstain.models.schema import FamilyOptions, Option

OPTIONS = FamilyOptions(
    run=(Option("std_scale", "float", minimum=0, help="Multiply the predicted std by this [1]."),)
)
