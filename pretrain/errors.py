"""The user-error type every part of the project raises and every command turns into one line and
exit status 2 (``pretrain.config.exit_on_config_error``). It lives apart so that any module (data
sources, safe loading, the model's neighbours) can raise it without importing the config tree."""


class ConfigError(ValueError):
    """A user error in a config file, an override, a command's arguments or the files they name."""
