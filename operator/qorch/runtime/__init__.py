"""The decision loop that runs the operator's code off a cluster, one runtime for both:
``qorch run`` drives it on the wall clock against this machine (processes, in-process
gateways); ``qorch simulate`` drives it on a simulated clock against the twin's simulated
backends and pools. Only the ``Clock`` and the ``World`` differ (``qorch.runtime.loop``)."""
