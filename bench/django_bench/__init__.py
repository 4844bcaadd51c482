"""The Django project of ``bench/django_tasks.py``: one PostgreSQL database,
two ``TASKS`` backends on it (asyncjob's, and django-tasks-db's reference
database backend), and the tasks both run. Its settings come from the
environment the benchmark gives (see :mod:`django_bench.settings`)."""
