"""CNI networking for pod sandboxes (containernetworking/cni SPEC.md, versions 0.3.x to 1.1.0).

Modules: ``config`` (network configuration files, section 1), ``invoke`` (plugin
execution, section 2), ``cni`` (attachments: ADD/DEL/CHECK of network lists,
section 3), ``types`` (results, section 5), ``cache`` (libcni-format result
cache), ``errors``. The CRI plugin uses :class:`CNI`; see its module docstring.
"""

from .cache import DEFAULT_CACHE_DIR, CachedAttachment, ResultCache
from .cni import (
    CNI,
    POD_ANNOTATIONS_CAPABILITY,
    InterfaceConfig,
    Network,
    SetupResult,
    capability_args,
    pod_args,
)
from .config import (
    DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR,
    NetworkConfigList,
    PluginConf,
    conf_list_from_bytes,
    conf_list_from_conf,
    load_conf_dir,
)
from .errors import CNIError, ConfigError, NotInitialized, PluginNotFound
from .invoke import DEFAULT_TIMEOUT, RuntimeConf
from .types import DNS, Interface, IPConfig, Result, Route, convert_result, parse_result, select_pod_ips

__all__ = [
    "CNI",
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CONF_DIR",
    "DEFAULT_TIMEOUT",
    "DNS",
    "POD_ANNOTATIONS_CAPABILITY",
    "CNIError",
    "CachedAttachment",
    "ConfigError",
    "IPConfig",
    "Interface",
    "InterfaceConfig",
    "Network",
    "NetworkConfigList",
    "NotInitialized",
    "PluginConf",
    "PluginNotFound",
    "Result",
    "ResultCache",
    "Route",
    "RuntimeConf",
    "SetupResult",
    "capability_args",
    "conf_list_from_bytes",
    "conf_list_from_conf",
    "convert_result",
    "load_conf_dir",
    "parse_result",
    "pod_args",
    "select_pod_ips",
]
