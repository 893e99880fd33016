"""A backbone cut into segments at single tensors, for HAR's checkpointed double backward.

`HARModel(checkpoint_layers=...)` trades time for memory: instead of keeping every
tensor of the forward pass and of the inner backward pass until the outer pass
reaches it, a step keeps only the tensors at the cuts and recomputes each segment
when the outer pass needs it. `Segments` builds and checks the segments;
`checkpointed_gradients` is the step, built from the same objective pieces
(`HARModel.objective`) as `HARModel`'s ordinary step.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from har_tf import regularizer
from har_tf.objective import StepGradients, times


def _check_cuts(backbone: keras.Model, cut_layers: Sequence[str]) -> None:
    """ValueError unless `cut_layers` can cut `backbone` (names, count, regularizers)."""
    if len(backbone.inputs) != 1 or len(backbone.outputs) != 1:
        raise ValueError(
            "checkpoint_layers needs a backbone with one input and one output, "
            f"{backbone.name} has {len(backbone.inputs)} and {len(backbone.outputs)}"
        )
    if not cut_layers:
        raise ValueError("checkpoint_layers is empty: name at least one layer to cut at")
    names = {layer.name for layer in backbone.layers}
    for name in cut_layers:
        if name not in names:
            raise ValueError(f"checkpoint layer {name!r} is not a layer of {backbone.name}")
    if len(set(cut_layers)) != len(cut_layers):
        raise ValueError(f"checkpoint_layers names a layer twice: {list(cut_layers)}")
    regularized = [
        layer.name
        # Keras has no public recursive layer walk (see har_tf/taps.py).
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "activity_regularizer", None) is not None
    ]
    if regularized:
        raise ValueError(
            f"checkpoint_layers does not support activity regularizers (layers "
            f"{regularized[:3]}): their losses come from a recomputed segment"
        )


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
        _check_cuts(backbone, cut_layers)
        position = {layer.name: i for i, layer in enumerate(backbone.layers)}
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


def checkpointed_gradients(model, x, y, sample_weight, tau, lam) -> StepGradients:
    """`HARModel.step_gradients` of the HAR objective, recomputing segments instead
    of keeping them (`model` is a HARModel with `checkpoint_layers`; `lam` > 0).

    It reads the model through its public interface: `model.segments`,
    `model.objective` (the pieces of the objective, shared with the ordinary step),
    `model.trainable_weights` and `model.weight_decay`.

    With h_k the input of segment k (h_0 = x), g_k = dL/dh_k, and b_k, a_k the
    adjoints of g_k and h_k in the outer (second) differentiation:

    1. One tape over the whole forward pass gives the loss, the cut tensors h_k, g_k
       and the taps' squared norms, hence R, the objective and the weights
       w = d(objective)/d(squared norms). Its tensors are released after it.
    2. Up, k = 0 .. K-1: segment k is recomputed from h_k under two tapes, the
       inner one giving g_k and the taps' gradients from g_{k+1}; the outer one
       differentiates w . squared norms + b_k . g_k (plus the loss, for the last
       segment), giving b_{k+1}, part of a_k and part of the weights' gradients.
    3. Down, k = K-2 .. 0: segment k is recomputed once more and backpropagates
       a_{k+1} to a_k and its weights.

    Each recomputation starts from the non-trainable variables (moving statistics,
    seed states) as they were before step 1, so that it computes what step 1 did
    (the same dropout masks) and leaves them as step 1 left them (one update).
    Control dependencies chain the segments, so that TensorFlow neither runs the
    recomputations early (holding them all) nor merges them.
    """
    step = _CheckpointedStep(model, x, y, sample_weight, tau, lam)
    step.up()
    step.down()
    return step.finish()


class _CheckpointedStep:
    """The state the three passes of `checkpointed_gradients` share (one step)."""

    def __init__(self, model, x, y, sample_weight, tau, lam):
        self.model = model
        self.objective = model.objective
        self.segments = segments = model.segments
        self.weights = model.trainable_weights
        self.slot = {id(v): i for i, v in enumerate(self.weights)}
        self.gradients = [None] * len(self.weights)
        self.x, self.y = x, y
        self.sample_weight = self.objective.loss_weights(y, sample_weight)
        self.loss_scale = self.objective.loss_scale()
        self.before = [[tf.identity(v.value) for v in vs] for vs in segments.state]
        self.last = len(segments.models) - 1
        self._forward(tau, lam)

    def accumulate(self, grads):
        for v, g in zip(self.weights, grads, strict=True):
            if g is not None:
                i = self.slot[id(v)]
                self.gradients[i] = g if self.gradients[i] is None else self.gradients[i] + g

    def ce_and_scaled(self, y_pred):
        ce = self.objective.ce(self.x, self.y, y_pred, self.sample_weight, training=True)
        return ce, times(ce, self.loss_scale)

    def _forward(self, tau, lam):
        """1. Forward and inner backward, kept only at the cuts."""
        objective, num_cuts = self.objective, self.last
        with tf.GradientTape() as tape:
            outputs = self.segments.full(self.x, training=True)
            y_pred, cuts, taps = outputs[0], outputs[1 : num_cuts + 1], outputs[num_cuts + 1 :]
            tape.watch([*cuts, *taps])
            ce, scaled_ce = self.ce_and_scaled(y_pred)
        inner = tape.gradient(
            scaled_ce, [*cuts, *taps], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        self.cut_grads, tap_grads = inner[:num_cuts], inner[num_cuts:]
        self.global_batch = objective.global_batch(self.y)
        squared = objective.squared_norms(tap_grads, self.loss_scale, self.global_batch)
        with tf.GradientTape() as tape:
            tape.watch(squared)
            _, reg, reg_loss = objective.penalty_from_squared(
                squared, self.y, tau, lam, self.global_batch
            )
            scaled_reg = objective.scale_loss(reg_loss)
        self.tap_weights = tape.gradient(scaled_reg, squared)
        self.y_pred, self.ce, self.reg, self.reg_loss = y_pred, ce, reg, reg_loss
        self.inputs = [self.x, *cuts]

    def recompute(self, k, anchor):
        """Segment k's input, after `anchor`, with its state set back to before step 1."""
        state = self.segments.state[k]
        with tf.control_dependencies(anchor):
            for v, value in zip(state, self.before[k], strict=True):
                v.assign(value)
        with tf.control_dependencies([*anchor, *[v.value for v in state]]):
            return tf.identity(self.inputs[k])

    def up(self):
        """2. Up through the segments: the outer differentiation of the inner backward."""
        anchor = [*self.cut_grads, *self.tap_weights]
        b = None  # adjoint of g_k; zero while no tap has been passed
        self.partial = [None] * len(self.segments.models)  # the up pass's part of a_k
        for k in range(len(self.segments.models)):
            if k < self.last and b is None and not self.segments.taps[k]:
                continue  # nothing here depends on a tap yet: b_{k+1} is zero
            h = self.recompute(k, anchor)
            seed = None if k == self.last else self.cut_grads[k]
            with tf.GradientTape() as outer:
                outer.watch(h)
                if seed is not None:
                    outer.watch(seed)
                contribution = self._outer_objective(k, h, seed, b)
            targets = ([h] if k > 0 else []) + ([seed] if seed is not None else [])
            result = outer.gradient(
                contribution,
                [*targets, *self.weights],
                unconnected_gradients=tf.UnconnectedGradients.NONE,
            )
            self.accumulate(result[len(targets) :])
            if k > 0:
                self.partial[k] = result[0]
            if seed is not None:
                b = result[len(targets) - 1]
                b = tf.zeros_like(seed) if b is None else b
            anchor = [t for t in result[: len(targets)] if t is not None] or anchor

    def _outer_objective(self, k, h, seed, b):
        """What the outer tape differentiates for segment k (recorded on it)."""
        with tf.GradientTape() as inner_tape:
            inner_tape.watch(h)
            out, seg_taps = self.segments.run(k, h)
            inner_tape.watch(seg_taps)
            if k == self.last:
                _, objective = self.ce_and_scaled(out)
            else:
                objective = tf.reduce_sum(
                    regularizer.at_least_float32(out * tf.cast(seed, out.dtype))
                )
        sources = ([h] if k > 0 else []) + seg_taps
        grads = inner_tape.gradient(
            objective, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        terms = []
        if seg_taps:
            seg_sq = self.objective.squared_norms(
                grads[-len(seg_taps) :], self.loss_scale, self.global_batch
            )
            terms += [
                tf.reduce_sum(self.tap_weights[t] * s)
                for t, s in zip(self.segments.taps[k], seg_sq, strict=True)
            ]
        if k > 0 and b is not None:
            terms.append(tf.reduce_sum(regularizer.at_least_float32(b * grads[0])))
        if k == self.last:
            terms.append(regularizer.at_least_float32(objective))
        return tf.add_n([tf.cast(t, self.reg_loss.dtype) for t in terms])

    def down(self):
        """3. Down through the segments: the first-order backward of the forward pass."""
        adjoint = self.partial[self.last]
        for k in range(self.last - 1, -1, -1):
            h = self.recompute(k, [adjoint])
            with tf.GradientTape() as tape:
                tape.watch(h)
                out, _ = self.segments.run(k, h)
            sources = ([h] if k > 0 else []) + self.weights
            grads = tape.gradient(out, sources, output_gradients=adjoint)
            self.accumulate(grads[len(sources) - len(self.weights) :])
            if k > 0:
                adjoint = grads[0] if self.partial[k] is None else grads[0] + self.partial[k]

    def finish(self) -> StepGradients:
        """The step's loss; this tape sees only the weight decay's share (ce and reg
        were computed before it), which is what the passes above left out."""
        objective = self.objective
        with tf.GradientTape() as tape:
            loss = objective.with_weight_decay(tf.cast(self.ce, self.reg.dtype) + self.reg_loss)
            scaled = objective.scale_loss(loss)
        if self.model.weight_decay:
            self.accumulate(tape.gradient(scaled, self.weights))
        return StepGradients(self.y_pred, loss, self.ce, self.reg, self.gradients)
