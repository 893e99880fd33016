"""A backbone cut into segments at single tensors, for HAR's checkpointed double backward.

`HARModel(checkpoint_layers=...)` trades time for memory: instead of keeping every
tensor of the forward pass and of the inner backward pass until the outer pass
reaches it, a step keeps only the tensors at the cuts and recomputes each segment
when the outer pass needs it (see `HARModel` for the passes and their cost). This
module builds and checks the segments; the passes are in `har_model.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


class Segments:
    """`backbone` cut at the outputs of `cut_layers`, each segment a functional model.

    Segment k maps the output of cut k - 1 (segment 0: the backbone's input) to the
    output of cut k (the last segment: the logits) and to the outputs of the tap
    layers computed inside it. Every cut must separate the graph: nothing after it
    may read a tensor from before it, which building each segment as a model with
    one input checks.

    Attributes:
      models: the K segment models; model k returns [output, *taps of segment k].
      taps: for each segment, the indices into `tap_layers` of its taps.
      full: a model from the input to [logits, *cut outputs, *taps in tap_layers order].
      state: for each segment, its non-trainable variables (moving statistics,
        random seed states), which a recomputation must leave as the first pass left
        them.
    """

    def __init__(self, backbone: keras.Model, cut_layers: Sequence[str], tap_layers: Sequence[str]):
        if len(backbone.inputs) != 1 or len(backbone.outputs) != 1:
            raise ValueError(
                "checkpoint_layers needs a backbone with one input and one output, "
                f"{backbone.name} has {len(backbone.inputs)} and {len(backbone.outputs)}"
            )
        if not cut_layers:
            raise ValueError("checkpoint_layers is empty: name at least one layer to cut at")
        position = {layer.name: i for i, layer in enumerate(backbone.layers)}
        for name in cut_layers:
            if name not in position:
                raise ValueError(f"checkpoint layer {name!r} is not a layer of {backbone.name}")
        if len(set(cut_layers)) != len(cut_layers):
            raise ValueError(f"checkpoint_layers names a layer twice: {list(cut_layers)}")
        regularized = [
            layer.name
            for layer in backbone._flatten_layers(include_self=False)
            if getattr(layer, "activity_regularizer", None) is not None
        ]
        if regularized:
            raise ValueError(
                f"checkpoint_layers does not support activity regularizers (layers "
                f"{regularized[:3]}): their losses come from a recomputed segment"
            )
        cuts = sorted(cut_layers, key=position.get)
        cut_tensors = []
        for name in cuts:
            tensor = backbone.get_layer(name).output
            if isinstance(tensor, (list, tuple)):
                raise ValueError(f"checkpoint layer {name!r} must have one output tensor")
            if tensor is backbone.outputs[0] or tensor is backbone.inputs[0]:
                raise ValueError(
                    f"checkpoint layer {name!r} is the backbone's input or output; a cut "
                    "must lie between them"
                )
            cut_tensors.append(tensor)
        bounds = [-1] + [position[name] for name in cuts] + [len(backbone.layers)]
        self.taps = [[] for _ in range(len(cuts) + 1)]
        for t, name in enumerate(tap_layers):
            k = next(k for k in range(len(cuts) + 1) if position[name] <= bounds[k + 1])
            self.taps[k].append(t)

        inputs = [backbone.inputs[0], *cut_tensors]
        outputs = [*cut_tensors, backbone.outputs[0]]
        self.models = []
        for k, (start, end) in enumerate(zip(inputs, outputs, strict=True)):
            taps = [backbone.get_layer(tap_layers[t]).output for t in self.taps[k]]
            try:
                model = keras.Model(start, [end, *taps], name=f"{backbone.name}_segment{k}")
            except ValueError as e:
                first = "the input" if k == 0 else repr(cuts[k - 1])
                raise ValueError(
                    f"checkpoint_layers must cut {backbone.name} into segments that each "
                    f"depend on one tensor only; segment {k} (from {first} to "
                    f"{'the logits' if k == len(cuts) else repr(cuts[k])}) reads something "
                    "else too: a skip connection across a cut, or a Keras mask made "
                    f"before it ({e})"
                ) from e
            self.models.append(model)
        self.full = keras.Model(
            backbone.inputs[0],
            [
                backbone.outputs[0],
                *cut_tensors,
                *[backbone.get_layer(name).output for name in tap_layers],
            ],
        )
        self.state = [list(model.non_trainable_variables) for model in self.models]

    def run(self, k: int, h, *, training: bool = True):
        """(output, [taps]) of segment k on input h."""
        outputs = self.models[k](h, training=training)
        if not isinstance(outputs, (list, tuple)):  # a one-output model returns a tensor
            return outputs, []
        return outputs[0], list(outputs[1:])
