# Provisioning of OS template 'win11-ltsc-2026.1': runs once at the build VM's first logon (from the answer
# file), prepares what every instrument PC needs from its system disk, then generalizes and shuts down.
# Rendered by imaging.unattend; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Version = 'win11-ltsc-2026.1'
$Log = 'C:\Windows\Temp\imaging-provision.log'
Start-Transcript -LiteralPath $Log -Append | Out-Null
try {
    # Volumes are mounted by label under C:\volumes and linked into C:\Instrument (see docs/design.md).
    foreach ($folder in @('C:\volumes', 'C:\Instrument')) {
        if (-not (Test-Path -LiteralPath $folder)) { New-Item -ItemType Directory -Path $folder | Out-Null }
    }
    # No drive letters for new volumes: the guest configuration mounts them by label.
    Set-StorageSetting -NewDiskPolicy OnlineAll
    & mountvol.exe /N | Out-Null
    # A VM never hibernates, and the page file stays on the OS disk that is thrown away at every reimage.
    & powercfg.exe /hibernate off | Out-Null
    & powercfg.exe /setactive 8c5e7fda-e8bf-4a96-9a85-a6e23a8c635c | Out-Null
    # PowerShell Direct and remoting are how imaging talks to the guest.
    Enable-PSRemoting -SkipNetworkProfileCheck -Force | Out-Null
    Enable-WindowsOptionalFeature -Online -FeatureName 'NetFx3' -NoRestart -All | Out-Null
    $key = 'HKLM:\SOFTWARE\Imaging'
    if (-not (Test-Path -LiteralPath $key)) { New-Item -Path $key -Force | Out-Null }
    Set-ItemProperty -LiteralPath $key -Name 'TemplateVersion' -Value $Version
    # The answer file holds the build account's password: it must not stay in the template.
    foreach ($answer in @('C:\Windows\Panther\unattend.xml', 'C:\Windows\Panther\Unattend\unattend.xml')) {
        if (Test-Path -LiteralPath $answer) { Remove-Item -LiteralPath $answer -Force }
    }
}
finally {
    Stop-Transcript | Out-Null
}
& (Join-Path $env:WINDIR 'System32\Sysprep\sysprep.exe') /generalize /oobe /shutdown /quiet
