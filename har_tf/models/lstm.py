"""The bidirectional LSTM the paper trains on IMDB-review, with tappable LSTM outputs."""

from __future__ import annotations

import keras


def imdb_bilstm(
    *,
    vocab_size: int,
    embedding_dim: int = 128,
    units: int = 256,
    num_layers: int = 2,
    dropout: float = 0.5,
    num_classes: int = 2,
    sequence_length: int | None = None,
    mask_zero: bool = True,
    use_cudnn: bool | str = False,
    name: str = "imdb_bilstm",
) -> keras.Model:
    """Builds the paper's IMDB classifier: embedding, stacked BiLSTMs, dropout, logits.

    Paper, App. B: "a two-layer bidirectional LSTM with 256 units followed with 0.5
    dropout before the linear classifier", trained with Adam for 20 epochs. The
    authors did not publish their IMDB code, so the embedding width (not stated in
    the paper) is a free choice here, and so is masking.

    Layers: `tokens` (int ids [B, T]) -> `embedding` -> `bilstm1` ... `bilstm{L}`
    (`Bidirectional(LSTM(units))`, forward and backward outputs concatenated; every
    layer but the last returns the whole sequence [B, T, 2 units], the last its final
    state [B, 2 units]) -> `dropout` -> `logits` (Dense, no activation). There is no
    BatchNormalization, so HAR taps the LSTM outputs: `rnn_tap_layers(model)`, i.e.
    `["bilstm1", "bilstm2"]` by default.

    Padding: with `mask_zero=True` token id 0 is padding; the LSTMs skip padded steps
    (they carry their state through, so padding can sit anywhere, though right
    padding is usual), padded positions of `bilstm1`'s output are zeros, and they get
    a zero gradient, so padding adds nothing to R. Masking is differentiable twice
    (`tests/har_tf/test_lstm.py` checks HAR's gradient against finite differences
    with padding present).

    cuDNN: HAR differentiates the gradient of the loss, and TensorFlow's cuDNN RNN
    kernel has no second-order gradient (no gradient is registered for
    `CudnnRNNBackpropV3`), so with a GPU and Keras's default `use_cudnn="auto"` a HAR
    train step fails to trace. This builder therefore defaults to `use_cudnn=False`,
    the generic `tf.while_loop` LSTM, which is exact to second order on any device
    (slower on a GPU). Pass `use_cudnn="auto"` only for ERM (`lam=0`) on a GPU;
    `HARModel` refuses it when `lam > 0` and a GPU is visible.

    Args:
      vocab_size: number of token ids, padding id 0 included.
      embedding_dim: width of the token embedding.
      units: LSTM units per direction.
      num_layers: stacked bidirectional layers (>= 1).
      dropout: rate of the dropout before the classifier (0 disables it).
      num_classes: width of the logits.
      sequence_length: fixed T, or None for variable-length batches.
      mask_zero: treat token id 0 as padding and mask it.
      use_cudnn: passed to every `keras.layers.LSTM`; keep False for HAR (above).
      name: model name.

    Returns:
      A functional `keras.Model` mapping int token ids [B, T] to logits [B, C].
    """
    if vocab_size < 2 or embedding_dim < 1 or units < 1 or num_layers < 1 or num_classes < 2:
        raise ValueError(
            "need vocab_size >= 2, embedding_dim, units and num_layers >= 1, num_classes "
            f">= 2; got {vocab_size}, {embedding_dim}, {units}, {num_layers}, {num_classes}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if use_cudnn not in (False, True, "auto"):
        raise ValueError(f"use_cudnn must be False, True or 'auto', got {use_cudnn!r}")
    tokens = keras.Input(shape=(sequence_length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=mask_zero, name="embedding")(
        tokens
    )
    for i in range(1, num_layers + 1):
        lstm = keras.layers.LSTM(units, return_sequences=i < num_layers, use_cudnn=use_cudnn)
        x = keras.layers.Bidirectional(lstm, name=f"bilstm{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(tokens, logits, name=name)


def rnn_tap_layers(model: keras.Model) -> list[str]:
    """Names of the recurrent layers (`Bidirectional` or `keras.layers.RNN`) of a model.

    These are HAR's tapped layers for `imdb_bilstm` (which has no BatchNormalization):
    pass `tap_layers=rnn_tap_layers(backbone)` to `HARModel`.
    """
    return [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Bidirectional | keras.layers.RNN)
    ]
