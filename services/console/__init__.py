"""The web console: experiments, their trials and releases, live in a browser (``tweakline console``)."""
