"""graphgen's fuzzing suite: every input gets a correct result or one clear error.

Three parts, each a generator of :class:`~fuzz.case.Case` objects driven by hypothesis
(strategies draw the decisions; the mutators build the bytes):

- ``spec``  (:mod:`fuzz.gen_specs`): mutated YAML/JSON specs, from ``examples/*.yaml``
  and ``benchmarks/specs/*.yaml``: structure, types, values, names, encodings, sizes;
- ``onnx``  (:mod:`fuzz.gen_onnx`): mutated ONNX files, from ``examples/lenet.onnx`` and
  ONNX's node-test models: bytes, graph structure, attributes, dtypes, opsets;
- ``call``  (:mod:`fuzz.gen_calls`): a few modules compiled once, called with mutated
  arrays: dtypes, shapes, layouts, flags, subclasses, sizes 0 and 1, NaN/inf, missing
  and extra arrays.

Cases run in a worker subprocess (:mod:`fuzz.pool`, :mod:`fuzz.worker`) that calls
``graphgen.cli.main`` in-process, under a soft time limit (an alarm) and a hard one (the
parent kills the worker), so a hang or a segfault cannot stop a run. Each case ends in
exactly one outcome (:mod:`fuzz.execute` classifies):

``ok``     a correct result, checked: the module's forward pass against graphgen's
           reference interpreter (and onnxruntime for ONNX models), its gradients
           against central finite differences in float64; a module call against the
           module on plain arrays with the same values, or against the other backend;
``error``  CLI: exit 2, exactly one ``graphgen: error:`` line naming the file (and a node,
           key or line when the mutation has one), no traceback; module call: a
           ``ValueError`` naming the array;
``crash``  a traceback, another exception, a malformed error report, a dead worker;
``hang``   over the per-case time limit;
``wrong``  a result that disagrees with the reference (or a valid array rejected, or an
           invalid one accepted, or a caller's array written to).

``python tests/fuzz/run.py --cases N --seed S`` (``make fuzz``) is the long run;
``tests/fuzz/test_fuzz.py`` the short one in ``make test``.
"""
