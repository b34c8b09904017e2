"""The diffusion family's options, declared without importing it (``zarrstain.options``).

``zarrstain predict --help`` reads these to make the family's flags; the family itself
(:mod:`zarrstain.models.diffusion.family`, torch) checks the values against a model's card.
"""

from __future__ import annotations

from zarrstain.models.schema import FamilyOptions, Option

__all__ = ["CLASSIFIER_OPTIONS", "CONTROL_OPTIONS", "OPTIONS", "SAMPLERS"]

SAMPLERS = ("ddim", "ddpm")

#: what a prediction may set (the CLI's flags): the sampler, each scene's class, guidance
RUN_SCHEMA = (
    Option("sampler", choices=SAMPLERS, help="Diffusion sampler [the model's: ddim]."),
    Option("steps", "int", minimum=1, help="Sampling steps [the model's: 50]."),
    Option("eta", "float", minimum=0, help="DDIM's noise (0: deterministic) [0]."),
    Option("samples", "int", minimum=1, help="Samples per field: mean and std [1]."),
    Option("keep_samples", "bool", help="Also write each sample ('<label> sample k')."),
    Option("classes", flag="--class-map", scene=True,
           help="Each scene's class: a CSV/TSV table well,class (or scene,class), a JSON "
           "object, or one label."),
    Option("class_key", scene=True, help="Attribute of the field's or well's group holding it."),
    Option("class_label", flag="--class", help="One class for every scene (overrides)."),
    Option("cfg_scale", "float", minimum=0, help="Classifier-free guidance weight [0]."),
    Option("guidance", "model", flag="--guidance-model", help="Noisy-image classifier."),
    Option("guidance_scale", "float", minimum=0, help="Classifier guidance [0]."),
    Option("guidance_class", help="Class guidance steers towards [the scene's]."),
    Option("scratch_every", "int", minimum=1, help="Steps between stored states [5]."),
)  # fmt: skip

#: where each training scene's class comes from (class-conditional training)
CLASS_SOURCES = (
    Option("classes", "path", flag="--class-map",
           help="Each scene's class: a CSV/TSV table well,class (or scene,class) or a JSON "
           "object."),
    Option("class_key", help="Attribute of the field's or well's group holding it."),
)  # fmt: skip

OPTIONS = FamilyOptions(
    run=RUN_SCHEMA,
    train=(
        *CLASS_SOURCES,
        Option("class_dropout", "float", minimum=0,
               help="Share of patches trained without their class (a null class, for "
               "--cfg-scale)."),
        Option("unconditional", "bool",
               help="Pretrain a backbone on the targets alone (no --input)."),
    ),
)  # fmt: skip
#: a control branch samples like a diffusion model over a frozen backbone
CONTROL_OPTIONS = FamilyOptions(
    run=RUN_SCHEMA,
    train=(
        Option("backbone", help="The frozen diffusion backbone (a model package)."),
        Option("embed_backbone", "bool", help="Store the backbone's weights in the package too."),
    ),
)
#: a noisy-image classifier learns the scenes' classes
CLASSIFIER_OPTIONS = FamilyOptions(train=CLASS_SOURCES)
