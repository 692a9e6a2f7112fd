"""The configuration: the YAML file, ``BROKER_*`` variables and command-line options
read onto validated models (``load``), where secrets come from (``secrets``), and one
model per provider type (``providers``). No network I/O."""
