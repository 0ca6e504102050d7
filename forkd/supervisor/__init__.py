"""The master process and its children: binding, forking, supervising, reloading.

`forkd.supervisor.master.Master` is the arbiter; `startup` is what `forkd start` runs.
Nothing in the framework (the forkd root package) imports from here.
"""
