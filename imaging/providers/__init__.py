"""Providers carry out steps: `lab` on a local folder, `hyperv` over PowerShell remoting."""
