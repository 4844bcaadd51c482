"""The runner: what an application holds (:class:`~asyncjob.Runner`), its
options, and the calls carried over to its loop from another one."""
