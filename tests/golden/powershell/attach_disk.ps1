# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'attach_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Puts a disk at its fixed slot on SCSI controller 0 of a VM that is off. A slot holding another disk is
    # refused rather than overwritten. The OS disk (slot 0) becomes the first boot device.
    $Vm = 'NDXZOOM'
    $Slot = 0
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-7.vhdx'
    $target = Get-VM -Name $Vm
    if ([string]$target.State -ne 'Off') { throw "refusing to change the disks of $Vm while it is $($target.State)" }
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { throw "the disk $Path does not exist" }
    if ($null -eq (Get-VMScsiController -VM $target -ControllerNumber 0 -ErrorAction SilentlyContinue)) {
        # a generation-1 VM made by hand (an adopted instrument's legacy side) may have IDE controllers only
        Add-VMScsiController -VM $target
        $Result['changed'] = $true
    }
    $current = Get-VMHardDiskDrive -VM $target -ControllerType SCSI -ControllerNumber 0 -ControllerLocation $Slot
    if ($null -ne $current) {
        if ($current.Path -ne $Path) { throw "slot $Slot of $Vm holds $($current.Path); detach it before attaching $Path" }
    }
    else {
        Add-VMHardDiskDrive -VM $target -ControllerType SCSI -ControllerNumber 0 -ControllerLocation $Slot -Path $Path
        $Result['changed'] = $true
    }
    if ($Slot -eq 0) {
        $drive = Get-VMHardDiskDrive -VM $target -ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0
        $firmware = Get-VMFirmware -VM $target
        $first = @($firmware.BootOrder)[0]
        if ($null -eq $first -or [string]$first.BootType -ne 'Drive' -or $first.Device.Path -ne $Path) {
            Set-VMFirmware -VM $target -FirstBootDevice $drive
            $Result['changed'] = $true
        }
    }
    $Result['slot'] = $Slot
    $Result['path'] = $Path
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
