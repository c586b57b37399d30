"""Every private attribute of FastStream or aiokafka the library relies on, one module per
library, each access a named function pinned by a unit test against the installed version."""
