"""An application whose tasks use nothing of asyncjob's: they load with any backend."""
