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

$ImagingAction = 'get_state'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Reports whether the VM exists, its power state and the disks on SCSI controller 0, each with its parent
    # (Get-VHD: the template or master a differencing disk was made from; none for a disk of its own), which
    # tells planning a disk imaging made from a hand-made one. Changes nothing.
    $Vm = 'NDXZOOM'
    $found = Get-VM -Name $Vm -ErrorAction SilentlyContinue
    $Result['exists'] = ($null -ne $found)
    $Result['power'] = 'Absent'
    $Result['disks'] = @()
    if ($null -ne $found) {
        $Result['power'] = [string]$found.State
        $Result['disks'] = @(Get-VMHardDiskDrive -VM $found |
            Where-Object { [string]$_.ControllerType -eq 'SCSI' -and $_.ControllerNumber -eq 0 } |
            Sort-Object -Property ControllerLocation |
            ForEach-Object {
                $parent = $null
                $vhd = Get-VHD -Path $_.Path -ErrorAction Stop
                if (-not [string]::IsNullOrEmpty([string]$vhd.ParentPath)) { $parent = [string]$vhd.ParentPath }
                [ordered]@{ slot = $_.ControllerLocation; path = $_.Path; parent = $parent }
            })
    }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
