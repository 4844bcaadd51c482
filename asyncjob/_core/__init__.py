"""What every layer of asyncjob shares: the data, the errors, the registry of
job definitions, the logger and the defaults.

It imports nothing else of the package: everything else may import it.
"""
