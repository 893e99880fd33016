"""Beam 2.77's DaskRunner, fixed for pipelines with several outputs and several sinks.

  python -m pipeline.preprocess ... --beam_args="--runner=DaskRunner \
      --dask_client_address=tcp://127.0.0.1:8786"

(`pipeline.preprocess.pipeline_options` maps `--runner=DaskRunner` and Beam's
`apache_beam.runners.dask.dask_runner.DaskRunner` to `pipeline.data.dask_runner.DaskRunner`.)

Beam's DaskRunner (apache_beam.runners.dask, Beam 2.77) turns each transform into a
dask.bag, and has three faults that break `pipeline.preprocess`:

  * it computes only the bag of the last transform it visits, so every other sink
    silently never runs (of a job's two splits, one is not written);
  * a ParDo's bag holds all of its outputs, main and tagged alike, and a consumer of
    any one of them reads the whole bag (`with_outputs` streams get mixed);
  * a side input is a bag that the task reading it computes itself, a dask
    computation nested inside another one over the same keys, and it can come back
    wrong: once (the test suite of 2026-12-06, two one-thread workers on
    this 2-core host) the task that counted the kept examples read no cut thresholds
    and kept every example while the task that wrote the shards had cut them, so
    manifest.json's counts silently disagreed with the shards.

`DaskRunner` here keeps Beam's translation of every other transform and its options,
but reads each PCollection by its tag, computes every sink, and makes each side input
an ordinary dependency of the tasks that read it (the scheduler computes it once and
hands the whole of it to each of them).
"""

from __future__ import annotations

import dataclasses
import functools

import apache_beam as beam
import dask
import dask.distributed as ddist
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask import transform_evaluator as evaluator
from apache_beam.runners.dask.overrides import dask_overrides
from apache_beam.transforms.sideinputs import SideInputMap


@dataclasses.dataclass(frozen=True)
class _SideInputView:
    """What a ParDo needs to read one side input, besides its values."""

    view_class: type
    view_options: dict
    window_mapping_fn: object

    def view(self, partitions: list[list]) -> SideInputMap:
        """The side input over its computed bag (a list per partition)."""
        values = [
            evaluator.get_windowed_value(v, self.window_mapping_fn)
            for part in partitions
            for v in part
        ]
        return SideInputMap(self.view_class, self.view_options, values)


def _run_bundle(items, fn, window_fn, label, views, side_values, args, kwargs) -> list:
    """Runs a DoFn over one dask partition; returns its outputs as (tag, value) pairs.

    Tag None is the main output. Like Beam's `apply_dofn_to_bundle`, but the
    receivers are made here, per partition, and outputs keep their tag (and those of
    finish_bundle are kept too). `side_values` holds each side input's computed
    partitions (dask substitutes them for the delayed ones), read through `views`.
    """
    side_inputs = [v.view(parts) for v, parts in zip(views, side_values, strict=True)]
    receivers = evaluator.OneReceiver()
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn),
        handler,
        context=DoFnContext(label, state=None),
        side_inputs=side_inputs or None,
        input_args=args,
        input_kwargs=kwargs,
        user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    # A receiver holds TaggedOutput(tag, windowed value) for a tagged output and the
    # windowed value itself for the main one; values leave without their window, as
    # in Beam's translation.
    return [
        (v.tag, v.value.value) if isinstance(v, pvalue.TaggedOutput) else (None, v.value)
        for v in receivers.values
    ]


class _TaggedParDo(evaluator.DaskBagOp):
    """A ParDo whose bag holds (tag, value) pairs; `_Visitor` splits them by tag.

    `side_inputs`: per side input, its `_SideInputView` and its bag."""

    def apply(self, input_bag, side_inputs=None):
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
        side_inputs = side_inputs or []
        views = [view for view, _ in side_inputs]
        # A bag's delayed partitions inside an argument are dependencies of each task:
        # dask computes them first and passes their values (dask.bag.map_partitions).
        side_values = [bag.to_delayed() for _, bag in side_inputs]
        return input_bag.map(evaluator.get_windowed_value, window_fn).map_partitions(
            _run_bundle,
            transform.fn,
            window_fn,
            transform.label,
            views,
            side_values,
            list(args),
            kwargs,
        )


_TRANSLATIONS = {**evaluator.TRANSLATIONS, beam.ParDo: _TaggedParDo}


def _has_tag(tag, item) -> bool:
    return item[0] == tag


def _value(item):
    return item[1]


def _drop(partition) -> list:
    """Runs a sink's partition for its effects; nothing goes back to the client."""
    for _ in partition:
        pass
    return []


@dataclasses.dataclass
class _Visitor(PipelineVisitor):
    """Translates each transform to a dask.bag and remembers which ones are sinks.

    Attributes:
      bag_kwargs: `dask.bag` arguments from the options (partitioning of Create).
      bags: transform -> its bag (for a ParDo: all its outputs as (tag, value)).
      consumed: transforms some other transform reads (as input or side input).
    """

    bag_kwargs: dict
    bags: dict = dataclasses.field(default_factory=dict)
    consumed: set = dataclasses.field(default_factory=set)

    def _bag(self, pcoll):
        """The bag of one PCollection: its producer's, cut to its tag for a ParDo."""
        producer = pcoll.producer
        self.consumed.add(producer)
        bag = self.bags[producer]
        if _TRANSLATIONS.get(type(producer.transform)) is _TaggedParDo:
            bag = bag.filter(functools.partial(_has_tag, pcoll.tag)).map(_value)
        return bag

    def visit_transform(self, node: AppliedPTransform) -> None:
        op = _TRANSLATIONS.get(type(node.transform), evaluator.NoOp)(
            node, bag_kwargs=self.bag_kwargs
        )
        inputs = [
            None if isinstance(pcoll, pvalue.PBegin) else self._bag(pcoll)
            for pcoll in node.inputs
            if isinstance(pcoll, pvalue.PBegin) or pcoll.producer in self.bags
        ]
        if len(inputs) == 1 and not isinstance(op, evaluator.Flatten):
            inputs = inputs[0]
        if node.side_inputs and not isinstance(op, _TaggedParDo):
            raise NotImplementedError(
                f"DaskRunner: side inputs of {type(node.transform).__name__} "
                f"({node.full_label}) are not supported, only those of a ParDo"
            )
        side_inputs = [
            (
                _SideInputView(type(si), si._view_options(), si._window_mapping_fn),
                self._bag(si.pvalue),
            )
            for si in node.side_inputs
        ]
        self.bags[node] = op.apply(input_bag=inputs or None, side_inputs=side_inputs or None)

    def sinks(self) -> list:
        """The bags no transform reads: computing them runs the whole pipeline."""
        return [
            bag.map_partitions(_drop)
            for node, bag in self.bags.items()
            if node not in self.consumed and bag is not None
        ]


class _Result(dask_runner.DaskRunnerResult):
    """Beam's result, closing the dask client once the job has ended."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            self.client.close()


class DaskRunner(dask_runner.DaskRunner):
    """Runs a pipeline on a dask.distributed cluster (`--dask_client_address`).

    Without an address, dask starts a LocalCluster in this process.
    """

    def run_pipeline(self, pipeline, options):
        dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)
        pipeline.replace_all(dask_overrides())
        visitor = _Visitor(bag_kwargs)
        pipeline.visit(visitor)
        client = ddist.Client(**dask_options)
        futures = client.compute(list(dask.optimize(*visitor.sinks())))
        return _Result(client, futures)
